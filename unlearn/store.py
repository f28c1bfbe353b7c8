"""A served model's deletion history: the request queue, its model versions and its ledger, in one directory.

    STORE/store.json      what the store serves: the original model, manifest, training data, holdout
    STORE/queue.sqlite    requests (ids of records only): pending, or answered by a model version
    STORE/ledger.jsonl    the deletion ledger; each version's entry records its parent, the requests it
                          answers and the cumulative sets (``unlearn.ledger`` verifies the chain)
    STORE/v0001, v0002 …  the model versions, each committed with its ledger entry

The ledger is the truth: a request is answered exactly when a committed entry says so. The queue is brought
in line with the ledger (``reconcile``) before every read, so a run killed after its commit and before the
queue was updated is never answered twice, and one killed before its commit is simply run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearn import ledger
from unlearn.errors import InputError, UnlearnError
from unlearn.fsutil import write_atomic
from unlearn.jsonio import JsonObject, JSONProblem, read_json

CONFIG, QUEUE, LEDGER = "store.json", "queue.sqlite", "ledger.jsonl"
PENDING, ANSWERED = "pending", "answered"
CUMULATIVE, EARLIER = "*all", "*earlier"  # verdict keys: every answered request, every one before this run


@dataclass
class Request:
    name: str
    seq: int
    added: str
    records: list[str]
    status: str = PENDING
    version: int | None = None
    entry_hash: str | None = None
    verdict: str | None = None


@dataclass
class Version:
    """A model version as its ledger entry records it."""

    number: int
    entry: JsonObject
    path: Path

    @property
    def weights(self) -> Path:
        """Where this version's weights are: its directory, or its parent's when the run changed nothing."""
        if self.entry.get("unchanged"):
            return ledger.resolve_output(self.entry["model_in"], self.path.parent / LEDGER)
        return self.path

    @property
    def cumulative_records(self) -> list[str]:
        return list(self.entry["cumulative_records"])

    @property
    def requests(self) -> dict[str, list[str]]:
        return dict(self.entry["requests"])


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    def exists(self) -> bool:
        return (self.root / CONFIG).is_file()

    def create(self, config: JsonObject) -> bool:
        """Create the store; False when another process created it meanwhile with the same configuration (this one
        joins it). A store serving something else is an error."""
        with ledger.locked(self.root / "create"):  # the lock file create.lock (released when the process dies)
            if self.exists():
                theirs = self.config()
                if any(theirs.get(k) != v for k, v in config.items()):
                    raise UnlearnError(f"{self.root}: a store serving {theirs.get('model')} was created here meanwhile")
                return False
            with self._db():
                pass
            write_atomic(self.root / CONFIG, json.dumps({**config, "created": _now()}, indent=2) + "\n")
            return True

    def config(self) -> JsonObject:
        if not self.exists():
            raise InputError("no request store here (create one with `unlearn requests add`)", file=self.root)
        path = self.root / CONFIG
        try:
            config = read_json(path)
        except JSONProblem as exc:
            raise InputError(f"unreadable store configuration ({exc})", file=path) from None
        if not isinstance(config, dict):
            raise InputError("the store configuration is not a JSON object", file=path)
        kinds = {"builtin": bool, "model": str, "data": list, "manifest": (str, type(None)),
                 "holdout": (str, type(None)), "retain_model": (str, type(None)), "spec": (str, type(None))}
        bad = [k for k, t in kinds.items() if k in config and not isinstance(config[k], t)]
        if isinstance(config.get("data"), list) and not all(isinstance(d, str) for d in config["data"]):
            bad.append("data")
        if bad or "model" not in config:
            raise InputError(f"store configuration field(s) {', '.join(bad or ['model'])} missing or of the wrong "
                             "type", file=path)
        return config

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.root / QUEUE, timeout=30, isolation_level=None)
        try:
            yield self._schema(con)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise InputError(f"the request queue is damaged ({exc})", file=self.root / QUEUE) from None
        finally:
            con.close()

    @staticmethod
    def _schema(con: sqlite3.Connection) -> sqlite3.Connection:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("""CREATE TABLE IF NOT EXISTS requests (
            name TEXT PRIMARY KEY, seq INTEGER NOT NULL, added TEXT NOT NULL, records TEXT NOT NULL,
            status TEXT NOT NULL, version INTEGER, entry_hash TEXT, verdict TEXT)""")
        return con

    @contextlib.contextmanager
    def run_lock(self) -> Iterator[None]:
        """One run at a time per store (the lock dies with the process)."""
        fd = os.open(self.root / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UnlearnError(f"{self.root}: another `requests run` is in progress") from None
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ the queue

    def requests(self, versions: Sequence[Version] | None = None) -> list[Request]:
        """Every request, after reconciling with the ledger (``versions``: the chain already read)."""
        self.reconcile(versions)
        with self._db() as con:
            rows = con.execute("SELECT name, seq, added, records, status, version, entry_hash, verdict "
                               "FROM requests ORDER BY seq").fetchall()
        return [Request(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def add(self, name: str | None, record_ids: Sequence[str]) -> tuple[Request | None, list[str], list[str]]:
        """Queue the ids not already answered or pending: (the new request or None, answered ids, pending ids).
        The queue is read and written in one transaction, so concurrent adds of the same ids queue each once."""
        self.reconcile()
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            rows = con.execute("SELECT status, records FROM requests").fetchall()
            answered = {i for status, ids in rows if status == ANSWERED for i in json.loads(ids)}
            queued = {i for status, ids in rows if status == PENDING for i in json.loads(ids)}
            seen_answered = [i for i in record_ids if i in answered]
            seen_pending = [i for i in record_ids if i in queued]
            fresh = list(dict.fromkeys(i for i in record_ids if i not in answered and i not in queued))
            if not fresh:
                con.execute("ROLLBACK")
                return None, seen_answered, seen_pending
            seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
            name = name or f"req-{seq:04d}"
            if con.execute("SELECT 1 FROM requests WHERE name = ?", (name,)).fetchone():
                con.execute("ROLLBACK")
                raise InputError(f"a request named {name!r} already exists", field="name")
            con.execute("INSERT INTO requests (name, seq, added, records, status) VALUES (?, ?, ?, ?, ?)",
                        (name, seq, _now(), json.dumps(fresh), PENDING))
            con.execute("COMMIT")
        return Request(name, seq, _now(), fresh), seen_answered, seen_pending

    def reconcile(self, versions: Sequence[Version] | None = None) -> None:
        """Make the queue say what the ledger says: answered exactly by the committed versions (an
        interrupted commit is finished or rolled back first); requests only the ledger knows are restored."""
        answered: dict[str, tuple[Version, list[str]]] = {}
        for v in self.versions() if versions is None else versions:
            for name, ids in v.requests.items():
                answered[name] = (v, ids)
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            known = {r[0]: r[1] for r in con.execute("SELECT name, status FROM requests")}
            for name, (v, ids) in answered.items():
                verdict = v.entry.get("request_verdicts", {}).get(name)
                if name not in known:
                    seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
                    con.execute("INSERT INTO requests (name, seq, added, records, status) VALUES (?, ?, ?, ?, ?)",
                                (name, seq, v.entry["time"], json.dumps(ids), PENDING))
                con.execute("UPDATE requests SET status = ?, version = ?, entry_hash = ?, verdict = ? WHERE name = ?",
                            (ANSWERED, v.number, v.entry["entry_hash"], verdict, name))
            for name, status in known.items():
                if status == ANSWERED and name not in answered:
                    con.execute("UPDATE requests SET status = ?, version = NULL, entry_hash = NULL, verdict = NULL "
                                "WHERE name = ?", (PENDING, name))
            con.execute("COMMIT")

    # ------------------------------------------------------------ versions

    def versions(self) -> list[Version]:
        """The version chain from the ledger (an interrupted commit is completed or rolled back first)."""
        if not self.ledger.exists() and not ledger.pending_journal(self.ledger).exists():
            return []
        with ledger.locked(self.ledger):
            ledger.recover(self.ledger, ledger.load_key())
        if not self.ledger.exists():
            return []
        rows = ledger.read_rows(self.ledger)
        bad = next((r for r in rows if r.problem or r.entry is None), None)
        if bad is not None:
            raise InputError(f"damaged ledger line ({bad.problem}); run `unlearn ledger verify`", file=self.ledger,
                             line=bad.line)
        return [Version(int(r.entry["version"]), r.entry, ledger.resolve_output(r.entry["output"], self.ledger))
                for r in rows if r.entry is not None and "version" in r.entry]

    def version_dir(self, number: int) -> Path:
        return self.root / f"v{number:04d}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
