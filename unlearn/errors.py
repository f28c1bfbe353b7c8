"""Typed errors raised at public boundaries; the CLI prints them as one line."""

from __future__ import annotations

from pathlib import Path


class UnlearnError(Exception):
    """A user-facing error: the message is one line that names the bad value and the fix."""


class InputError(UnlearnError):
    """Bad input data, pointing at file, line and field where known."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file, self.line, self.field = file, line, field
        where = ""
        if file is not None:
            where = str(file) + (f":{line}" if line is not None else "")
        if field is not None:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class ModelError(UnlearnError):
    """A model directory that cannot be loaded or written."""


class ConfigError(UnlearnError, ValueError):
    """An invalid argument or configuration value."""


class Interrupted(UnlearnError):
    """Ctrl-C or SIGTERM; the message says exactly what exists afterwards."""
