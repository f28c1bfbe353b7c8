"""Workflows: a typed job in, a result dataclass out, files written all-or-nothing. The CLI is a thin layer
over these; Python users call them directly (``unlearn.forget(unlearn.ForgetJob(...))``)."""
