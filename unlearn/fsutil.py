"""Durable file-system steps shared by model saving, the ledger and the benchmark cache."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors",)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(files: dict[str, str]) -> str:
    """One hash for the weights: sha256 over the sorted (name, sha256) of the weight files."""
    h = hashlib.sha256()
    for name in sorted(files):
        if name.endswith(WEIGHT_SUFFIXES):
            h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file below ``directory`` and every directory, itself included."""
    for f in directory.iterdir():
        if f.is_dir() and not f.is_symlink():
            fsync_tree(f)
        elif f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(directory)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def temp_sibling(out: Path) -> Path:
    """A new empty directory beside ``out`` named ``.NAME.tmp-PID-XXXX`` (the PID lets a later run tell a
    crashed run's leftovers from a live one's)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
