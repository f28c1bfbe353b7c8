"""unlearn: machine unlearning and data removal for language models (the model side)."""

from __future__ import annotations

import os

# Never reach the hub: a name that is not a local directory must fail at once, not retry for 30 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from unlearn.errors import InputError, ModelError, UnlearnError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["InputError", "ModelError", "UnlearnError", "__version__"]
