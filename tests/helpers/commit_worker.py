"""Commit one fake model to a ledger through the real commit protocol (for the fault-injection and
concurrency tests): ``python commit_worker.py LEDGER OUT [--wait BARRIER_FILE]``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from unlearn import ledger
from unlearn.data import text_record
from unlearn.model import MANIFEST, sha256_file, weights_hash


def write(directory: Path) -> dict:
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(os.urandom(256))
    files = {f.name: sha256_file(f) for f in sorted(directory.iterdir())}
    manifest = {"files": files, "weights_sha256": weights_hash(files)}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def commit_one(path: Path, out: Path) -> ledger.Commit:
    """Commit one fake model (in this process: the fast tests build their ledgers this way)."""
    key = ledger.load_key(create=True)
    assert key is not None
    content = ledger.make_entry(key, records=[text_record(out.name, f"secret text of {out.name}")],
                                method="fake", config={}, model_before="0" * 64)
    return ledger.commit_model(path, key, content, out, write)


def main() -> None:
    path, out = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 4 and sys.argv[3] == "--wait":  # line up with the other workers
        while not Path(sys.argv[4]).exists():
            time.sleep(0.005)
    commit = commit_one(path, out)
    print("COMMITTED", commit.entry["entry_hash"], flush=True)


if __name__ == "__main__":
    main()
