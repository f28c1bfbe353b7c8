"""The deletion ledger: an append-only JSONL hash chain of processed requests.

Each entry holds record ids and salted sha256 hashes of the removed texts (never the texts), the
weights hashes of the model before and after, and the hash of the previous entry. A data owner who
knows a text can check it was removed: sha256(salt + text) with the entry's salt.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn.data import Record
from unlearn.errors import InputError, ModelError
from unlearn.model import model_hash

GENESIS = "0" * 64


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _line(entry: dict[str, Any]) -> str:
    """The one serialisation a ledger line may have (so whitespace edits are detected too)."""
    return json.dumps(entry, sort_keys=True, ensure_ascii=True)


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "entry_hash"})).hexdigest()


def salted_hash(salt: str, text: str) -> str:
    return hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def _read(path: Path) -> list[tuple[int, dict[str, Any] | None, str]]:
    rows = []
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        rows.append((line_no, obj if isinstance(obj, dict) else None, raw))
    return rows


def last_hash(path: Path) -> str:
    if not path.exists():
        return GENESIS
    rows = _read(path)
    if not rows:
        return GENESIS
    _, obj, _ = rows[-1]
    if obj is None or "entry_hash" not in obj:
        raise InputError("the last ledger line is not a valid entry; run `unlearn ledger verify`",
                         file=path, line=rows[-1][0])
    return str(obj["entry_hash"])


def make_entry(path: Path, *, request_file: str, records: Sequence[Record], method: str, config: dict[str, Any],
               model_before: str, model_after: str, output: str, stop_reason: str) -> dict[str, Any]:
    salt = secrets.token_hex(16)
    entry: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request_file_sha256": hashlib.sha256(Path(request_file).read_bytes()).hexdigest() if request_file else None,
        "salt": salt,
        "records": [{"id": r.id, "salted_sha256": salted_hash(salt, r.text)} for r in records],
        "method": method,
        "config_sha256": hashlib.sha256(_canonical(config)).hexdigest(),
        "model_before": model_before,
        "model_after": model_after,
        "output": output,
        "stop_reason": stop_reason,
        "prev_hash": last_hash(path),
    }
    entry["entry_hash"] = entry_hash(entry)
    return entry


def append(path: Path, entry: dict[str, Any]) -> None:
    """Append one line and fsync; the ledger is never rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(_line(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class LedgerProblem:
    line: int
    message: str


def verify(path: str | Path, *, check_models: bool = True) -> tuple[int, list[LedgerProblem]]:
    """Check every entry's hash, the chain, and (``check_models``) that each output model still has the
    recorded weights hash. Returns (entries, problems)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("ledger file not found", file=path)
    problems: list[LedgerProblem] = []
    prev = GENESIS
    rows = _read(path)
    for line_no, obj, raw in rows:
        if obj is None:
            problems.append(LedgerProblem(line_no, "not a JSON object (line edited or truncated)"))
            prev = ""
            continue
        if obj.get("entry_hash") != entry_hash(obj) or raw != _line(obj):
            problems.append(LedgerProblem(line_no, "entry hash mismatch: the line was edited"))
        if prev and obj.get("prev_hash") != prev:
            problems.append(LedgerProblem(line_no, "chain broken: prev_hash does not match the previous entry "
                                                   "(a line was removed, reordered or edited)"))
        prev = str(obj.get("entry_hash", ""))
        out = obj.get("output")
        if check_models and out and Path(out).exists():
            try:
                actual = model_hash(out)
            except ModelError as exc:
                problems.append(LedgerProblem(line_no, f"output model unreadable: {exc}"))
                continue
            if actual != obj.get("model_after"):
                recorded = str(obj.get("model_after"))[:12]
                problems.append(LedgerProblem(line_no, f"model {out} no longer has the recorded weights "
                                                       f"(sha256 {actual[:12]}... != {recorded}...)"))
    return len(rows), problems
