"""The deletion ledger: an append-only JSON Lines hash chain of answered requests, and the one commit
protocol that writes a model and its entry together.

Entries hold record ids and keyed digests of the removed texts (HMAC-SHA256 under an operator key that is
never stored in the ledger: from the ledger alone a digest cannot be recomputed, so low-entropy texts
cannot be guessed), the weights hashes before and after, the output path relative to the ledger, the
previous entry's hash and the entry's own MAC. Anchors outside the file catch truncation and rewrites:
each output model keeps a copy of its entry (``unlearn_ledger_anchor.json``), and ``<ledger>.head`` holds
the entry count and head hash under the key.

Commit (``commit_model``): the model is written into a temporary sibling; under an exclusive lock on
``<ledger>.lock`` the chain head is re-read, the entry finalised and written into the model and into a
journal ``<ledger>.pending``; then the model is renamed into place, the entry appended and fsynced, the
head anchor updated and the journal removed. A crash at any point leaves either nothing, or model and
entry, or a journal that the next commit (or ``unlearn ledger recover``) completes. Locks are
``fcntl.flock``: on network file systems use a lock-capable mount or one writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.data import Record
from unlearn.errors import InputError, ModelError, UnlearnError
from unlearn.fsutil import fsync_dir, temp_sibling, write_atomic
from unlearn.jsonio import JsonObject, JSONProblem, parse_line, read_bytes, read_json, show

GENESIS = "0" * 64
VERSION = 2
ANCHOR = "unlearn_ledger_anchor.json"
KEY_ENV, KEY_FILE_ENV = "UNLEARN_LEDGER_KEY", "UNLEARN_LEDGER_KEY_FILE"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Named points of the commit where tests pause (UNLEARN_COMMIT_PAUSE=stage) to kill the process.
STAGES = ("written", "locked", "journaled", "renamed", "appended", "anchored")


# ---------------------------------------------------------------- keys and digests

def default_key_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "unlearn" / "ledger.key"


def load_key(*, create: bool = False) -> bytes | None:
    """The operator key: ``$UNLEARN_LEDGER_KEY`` (hex), else the file ``$UNLEARN_LEDGER_KEY_FILE`` or
    ``~/.config/unlearn/ledger.key`` (created, mode 0600, when ``create`` and missing)."""
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError:
            raise InputError(f"${KEY_ENV} must be hex digits") from None
        if len(key) < 16:
            raise InputError(f"${KEY_ENV} must be at least 16 bytes (32 hex digits)")
        return key
    path = Path(os.environ.get(KEY_FILE_ENV) or default_key_file())
    key = _secret_file(path, create, lambda: secrets.token_hex(32), "ledger key file unreadable or not hex")
    if key is None:
        return None
    if len(key) < 16:
        raise InputError("ledger key too short (at least 16 bytes)", file=path)
    return key


def key_id(key: bytes) -> str:
    """Names the key without revealing it."""
    return hmac.new(key, b"unlearn-ledger-key-id", hashlib.sha256).hexdigest()[:16]


def record_digest(key: bytes, salt: str, text: str) -> str:
    """HMAC-SHA256(key, salt || text): a data owner with the operator's key can check a text was removed."""
    return hmac.new(key, (salt + text).encode("utf-8"), hashlib.sha256).hexdigest()


def _canonical(entry: JsonObject) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_of(entry: JsonObject) -> str:
    """The one serialisation a ledger line may have (so any byte edit is detected)."""
    return json.dumps(entry, sort_keys=True, ensure_ascii=True)


def entry_hash(entry: JsonObject) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "entry_hash"})).hexdigest()


def entry_mac(key: bytes, entry: JsonObject) -> str:
    return hmac.new(key, _canonical({k: v for k, v in entry.items() if k not in ("entry_hash", "mac")}),
                    hashlib.sha256).hexdigest()


def make_entry(key: bytes, *, records: Sequence[Record], method: str, config: JsonObject, model_before: str,
               request_file: str | Path | None = None, stop_reason: str = "",
               extra: JsonObject | None = None) -> JsonObject:
    """The entry's content before it is chained (``finalise``); no deleted text, no unkeyed hash of any."""
    salt = secrets.token_hex(16)
    request_digest = None
    if request_file:
        request_digest = hmac.new(key, read_bytes(Path(request_file)), hashlib.sha256).hexdigest()
    return {"v": VERSION, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "key_id": key_id(key),
            "salt": salt, "records": [{"id": r.id, "digest": record_digest(key, salt, r.text)} for r in records],
            "request_file_digest": request_digest, "method": method,
            "config_sha256": hashlib.sha256(_canonical(config)).hexdigest(), "model_before": model_before,
            "stop_reason": stop_reason, **(extra or {})}


def finalise(key: bytes, content: JsonObject, *, prev_hash: str, model_after: str, output: str) -> JsonObject:
    entry = {**content, "model_after": model_after, "output": output, "prev_hash": prev_hash}
    entry["mac"] = entry_mac(key, entry)
    entry["entry_hash"] = entry_hash(entry)
    return entry


# ---------------------------------------------------------------- reading

@dataclass
class Row:
    line: int
    raw: bytes
    entry: JsonObject | None
    problem: str | None = None


def read_rows(path: Path) -> list[Row]:
    """Every line as bytes, parsed strictly; a bad line is a row with a problem, never an exception."""
    data = read_bytes(path)
    if not data:
        return []
    lines = data.split(b"\n")
    rows = []
    for i, raw in enumerate(lines[:-1] if data.endswith(b"\n") else lines, start=1):
        try:
            obj = parse_line(raw)
        except JSONProblem as exc:
            rows.append(Row(i, raw, None, str(exc)))
            continue
        if not isinstance(obj, dict):
            rows.append(Row(i, raw, None, f"not a JSON object ({type(obj).__name__})"))
            continue
        rows.append(Row(i, raw, obj, _schema_problem(obj)))
    if not data.endswith(b"\n"):
        rows[-1].problem = rows[-1].problem or "the last line is not terminated (a write was cut short)"
    return rows


def _schema_problem(e: JsonObject) -> str | None:
    for name in ("entry_hash", "prev_hash", "model_after", "model_before"):
        if not isinstance(e.get(name), str) or not _HEX64.fullmatch(e[name]):
            return f"field '{name}' is not a sha256 hex digest"
    if not isinstance(e.get("output"), str) or not e["output"]:
        return "field 'output' is not a path"
    if not isinstance(e.get("records"), list) or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str) for r in e["records"]):
        return "field 'records' is not a list of {id, digest}"
    if not isinstance(e.get("mac"), str):
        return "field 'mac' is missing"
    return None


def head_of(path: Path) -> tuple[int, str]:
    """(entries, head hash) of a ledger whose every line is valid; a damaged ledger is an error."""
    if not path.exists():
        return 0, GENESIS
    rows = read_rows(path)
    bad = next((r for r in rows if r.problem or r.entry is None), None)
    if bad is not None:
        raise InputError(f"damaged ledger line ({bad.problem}); run `unlearn ledger verify`", file=path,
                         line=bad.line)
    return len(rows), (str(rows[-1].entry["entry_hash"]) if rows else GENESIS)  # type: ignore[index]


def verified_head(path: Path, key: bytes | None) -> tuple[int, str]:
    """`head_of`, once the chain, every MAC and the head anchor verify with ``key`` (the models are not
    checked): nothing is appended to a forged, truncated or damaged ledger."""
    n, head = head_of(path)
    if n and key is not None:
        report = verify(path, check_models=False, key=key)
        if not report.ok:
            first = report.problems[0]
            raise InputError(f"the ledger fails verification ({first.message}); nothing was written, run "
                             "`unlearn ledger verify`", file=path, line=first.line)
    return n, head


# ---------------------------------------------------------------- locking, anchors, journal

def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<ledger>.lock`` (fcntl.flock; released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_sidecar(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pending_journal(path: Path) -> Path:
    """The journal of a commit in progress (or interrupted): ``<ledger>.pending``."""
    return _sidecar(path, ".pending")


def head_mac(key: bytes, entries: int, head: str) -> str:
    return hmac.new(key, f"{entries}:{head}".encode(), hashlib.sha256).hexdigest()


def write_head(path: Path, key: bytes, entries: int, head: str) -> None:
    """The head anchor: entry count and last hash, MACed with the operator key and signed with the operator's
    Ed25519 signing key (created beside the key file on first use), so that anyone with the public key can check
    the whole chain without the secret."""
    signer = load_signing_key(create=True)
    assert signer is not None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(_sidecar(path, ".head"), json.dumps(
        {"entries": entries, "head": head, "time": when, "key_id": key_id(key), "mac": head_mac(key, entries, head),
         "pubkey": public_key_hex(signer), "signature": signer.sign(head_message(entries, head, when)).hex()})
        + "\n")


# ---------------------------------------------------------------- signed heads (Ed25519)

SIGNING_KEY_FILE_ENV = "UNLEARN_LEDGER_SIGNING_KEY_FILE"


def signing_key_file() -> Path:
    """``$UNLEARN_LEDGER_SIGNING_KEY_FILE``, else ``ledger-signing.key`` beside the operator key file."""
    env = os.environ.get(SIGNING_KEY_FILE_ENV)
    return Path(env) if env else Path(os.environ.get(KEY_FILE_ENV) or default_key_file()).with_name(
        "ledger-signing.key")


def load_signing_key(*, create: bool = False) -> Any:
    """The operator's Ed25519 signing key (a private key object), created (mode 0600) when ``create`` and
    missing; None when missing."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = signing_key_file()
    problem = "ledger signing key unreadable (64 hex digits)"
    seed = _secret_file(path, create, lambda: Ed25519PrivateKey.generate().private_bytes_raw().hex(), problem)
    if seed is None:
        return None
    try:
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError:
        raise InputError(problem, file=path) from None


def _secret_file(path: Path, create: bool, make: Callable[[], str], problem: str) -> bytes | None:
    """The bytes of a hex secret file; created with ``make()`` (mode 0600) when ``create`` and missing."""
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make() + "\n")
    try:
        return _hex_file(path)
    except (ValueError, UnicodeDecodeError):
        raise InputError(problem, file=path) from None


def _hex_file(path: Path) -> bytes:
    """The bytes written as hex digits in a small file (a key)."""
    return bytes.fromhex(read_bytes(path, SMALL_FILE).decode("ascii").strip())


def public_key_hex(signer: Any) -> str:
    return str(signer.public_key().public_bytes_raw().hex())


def load_public_key(spec: str) -> Any:
    """An Ed25519 public key from 64 hex digits or a file holding them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(spec)
    try:
        return Ed25519PublicKey.from_public_bytes(_hex_file(p) if p.is_file() else bytes.fromhex(spec.strip()))
    except (ValueError, UnicodeDecodeError):
        raise InputError("not an Ed25519 public key (64 hex digits, or a file holding them)", field="pubkey",
                         file=p if p.is_file() else None) from None


def head_message(entries: int, head: str, when: str) -> bytes:
    return f"unlearn-ledger-head\0{entries}\0{head}\0{when}".encode()


def signature_valid(pubkey: Any, head: JsonObject) -> bool:
    try:
        return _signed(pubkey, head, head_message(int(head["entries"]), str(head["head"]), str(head["time"])))
    except (KeyError, TypeError, ValueError):
        return False


def anchor_message(pointer: str, entry_hash: str) -> bytes:
    """What a model's anchor signs: its back-pointer to the ledger and the hash of its entry."""
    return f"unlearn-ledger-anchor\0{pointer}\0{entry_hash}".encode()


def signed_anchor(pointer: str, entry: JsonObject) -> JsonObject:
    """A model's anchor (its entry and the back-pointer to its ledger), signed with the operator's signing key:
    editing the pointer or the entry hash breaks the signature."""
    signer = load_signing_key(create=True)
    assert signer is not None
    return {"ledger": pointer, "entry": entry, "pubkey": public_key_hex(signer),
            "signature": signer.sign(anchor_message(pointer, str(entry["entry_hash"]))).hex()}


def anchor_signature_valid(pubkey: Any, anchor: JsonObject) -> bool:
    entry = anchor.get("entry")
    if not isinstance(entry, dict) or not isinstance(anchor.get("ledger"), str):
        return False
    return _signed(pubkey, anchor, anchor_message(str(anchor["ledger"]), str(entry.get("entry_hash"))))


def _signed(pubkey: Any, obj: JsonObject, message: bytes) -> bool:
    """Whether ``obj["signature"]`` is ``pubkey``'s signature of ``message`` and ``obj`` names that key."""
    from cryptography.exceptions import InvalidSignature

    try:
        pubkey.verify(bytes.fromhex(str(obj["signature"])), message)
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return obj.get("pubkey") in (None, pubkey.public_bytes_raw().hex())


def _append_line(path: Path, entry: JsonObject) -> None:
    with path.open("ab") as fh:
        fh.write((line_of(entry) + "\n").encode("ascii"))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def _pause(stage: str) -> None:
    """Test hook: with UNLEARN_COMMIT_PAUSE=stage, stop here until the file $UNLEARN_COMMIT_RESUME exists
    (or for an hour), so a test can kill or interrupt the commit at a named point."""
    if os.environ.get("UNLEARN_COMMIT_PAUSE") != stage:
        return
    print(f"PAUSED {stage}", flush=True)
    resume = os.environ.get("UNLEARN_COMMIT_RESUME")
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline and not (resume and Path(resume).exists()):
        time.sleep(0.05)


def append_entry(path: Path, key: bytes, content: JsonObject, *, model_after: str, output: str) -> JsonObject:
    """Chain and append one entry under the lock (no model to commit with it)."""
    with locked(path):
        recover(path, key)
        n, head = verified_head(path, key)
        entry = finalise(key, content, prev_hash=head, model_after=model_after, output=output)
        _append_line(path, entry)
        write_head(path, key, n + 1, entry["entry_hash"])
    return entry


def relative_output(out: Path, ledger: Path) -> str:
    return os.path.relpath(out.resolve(), ledger.resolve().parent)


def resolve_output(entry_output: str, ledger: Path) -> Path:
    p = Path(entry_output)
    return p if p.is_absolute() else (ledger.resolve().parent / p)


def check_paths(out: Path, ledger: Path, input_model: Path | None) -> None:
    """Before any work: every place the commit will write is valid and writable."""
    out, ledger = out.absolute(), ledger.absolute()
    if input_model is not None:
        m = input_model.resolve()
        for name, p in (("--out", out), ("--ledger", ledger)):
            if p.resolve() == m or m in p.resolve().parents:
                raise InputError(f"{name} must not be inside the input model {m} (it is never modified)", file=p)
    if out.exists():
        raise InputError("output directory already exists (choose a new --out; nothing is overwritten)", file=out)
    if ledger.exists() and ledger.is_dir():
        raise InputError("the ledger is a directory, not a JSON Lines file", file=ledger)
    if ledger.resolve() == out.resolve() or out.resolve() in ledger.resolve().parents:
        raise InputError("the ledger must not be the output directory or inside it", file=ledger)
    for p in (out.parent, ledger.parent):
        existing = next((q for q in (p, *p.parents) if q.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise InputError("directory not writable", file=existing or p)
    if ledger.exists() and not os.access(ledger, os.R_OK | os.W_OK):
        raise InputError("ledger not readable and writable", file=ledger)
    verified_head(ledger, load_key())  # a damaged or forged ledger fails now, before any work


# ---------------------------------------------------------------- the commit

@dataclass
class Commit:
    out: Path
    entry: JsonObject


def commit_model(ledger: Path, key: bytes, content: JsonObject, out: Path,
                 write: Callable[[Path], JsonObject], *, expect_head: str | None = None) -> Commit:
    """Write a model and its ledger entry together. ``write(directory)`` writes the model files (weights,
    receipt) into ``directory`` and returns its manifest (``weights_sha256``). With ``expect_head`` the
    commit happens only if the ledger still ends at that entry hash (nobody committed meanwhile)."""
    ledger, out = ledger.absolute(), out.absolute()
    sweep_stale(out.parent)
    tmp = temp_sibling(out)
    token = secrets.token_hex(16)
    try:
        (tmp / TEMP_TOKEN).write_text(token)  # proves to a later recovery that this directory is ours
        manifest = write(tmp)
        _pause("written")
        with locked(ledger):
            _pause("locked")
            recover(ledger, key)
            n, head = verified_head(ledger, key)
            if expect_head is not None and head != expect_head:
                raise UnlearnError(f"{ledger}: another run committed while this one worked (head "
                                   f"{head[:12]}..., expected {expect_head[:12]}...); nothing was written, rerun")
            if out.exists():
                raise ModelError(f"output directory already exists: {out} (created while this run worked)")
            entry = finalise(key, content, prev_hash=head, model_after=manifest["weights_sha256"],
                             output=relative_output(out, ledger))
            anchor = signed_anchor(os.path.relpath(ledger, out), entry)
            write_atomic(tmp / ANCHOR, json.dumps(anchor, indent=2) + "\n")
            write_atomic(_sidecar(ledger, ".pending"), json.dumps({"out": str(out), "tmp": str(tmp),
                                                                     "token": token, "entry": entry}) + "\n")
            _pause("journaled")
            os.rename(tmp, out)
            fsync_dir(out.parent)
            (out / TEMP_TOKEN).unlink()
            _pause("renamed")
            _append_line(ledger, entry)
            _pause("appended")
            write_head(ledger, key, n + 1, entry["entry_hash"])
            _pause("anchored")
            _sidecar(ledger, ".pending").unlink()
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Commit(out, entry)


def recover(ledger: Path, key: bytes | None) -> str | None:
    """Finish or undo an interrupted commit (call under the lock). Returns what was done, or None."""
    journal = _sidecar(ledger, ".pending")
    if not journal.exists():
        return None
    try:
        pending = read_json(journal)
        entry, out, tmp = pending["entry"], Path(pending["out"]), Path(pending["tmp"])
        token = pending.get("token")
        if not isinstance(entry, dict) or not isinstance(entry.get("prev_hash"), str):
            raise ValueError("entry")
    except (InputError, ValueError, KeyError, TypeError):  # ValueError: JSONProblem too
        raise InputError("unreadable commit journal; inspect it, then remove it", file=journal) from None
    n, head = head_of(ledger)
    anchored = _read_anchor(out)
    if out.exists() and anchored is not None and anchored.get("entry") == entry:
        if head == entry["prev_hash"]:
            _append_line(ledger, entry)
            n, head = n + 1, entry["entry_hash"]
            done = f"completed the interrupted commit of {out}: its ledger entry was appended"
        elif head == entry["entry_hash"]:
            done = f"completed the interrupted commit of {out}: the entry was already appended"
        else:
            raise UnlearnError(f"{journal}: the ledger moved on past an interrupted commit of {out}; "
                               "resolve by hand (the entry is in the model's anchor file)")
        with contextlib.suppress(OSError):
            (out / TEMP_TOKEN).unlink()
    elif (tmp.exists() or tmp.is_symlink()) and not owned_temp(tmp, out, token):
        done = (f"rolled back an interrupted commit of {out}; left {tmp} in place: the journal names it as its "
                "temporary directory, but it is not one this toolkit can prove it created (a .NAME.tmp-PID-XXXX "
                "directory beside the output holding the journal's token)")
    else:
        if tmp.exists():
            shutil.rmtree(tmp)
        done = f"rolled back an interrupted commit of {out}: nothing of it was kept"
    if key is not None and n:
        write_head(ledger, key, n, head)
    journal.unlink()
    return done


SMALL_FILE = 4096  # the most a key file or a head anchor can hold
TEMP_TOKEN = ".unlearn-temp-token"  # inside a commit's temporary directory until the rename


def owned_temp(tmp: Path, out: Path, token: Any) -> bool:
    """Whether ``tmp`` is the temporary directory of a commit of ``out`` that recorded ``token``: a real directory
    (no link) beside ``out``, named ``.OUT.tmp-PID-XXXX``, holding the token file with that token."""
    if not isinstance(token, str) or tmp.is_symlink() or not tmp.is_dir():
        return False
    if tmp.parent.resolve() != out.parent.resolve() or not re.fullmatch(
            rf"\.{re.escape(out.name)}\.tmp-\d+-[^/]+", tmp.name):
        return False
    marker = tmp / TEMP_TOKEN
    try:
        return not marker.is_symlink() and marker.is_file() and marker.stat().st_size < 100 and \
            hmac.compare_digest(marker.read_text(encoding="ascii"), token)
    except (OSError, UnicodeDecodeError):
        return False


def _read_anchor(out: Path) -> JsonObject | None:
    try:
        obj = read_json(out / ANCHOR)
    except (InputError, JSONProblem):
        return None
    return obj if isinstance(obj, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


_TMP = re.compile(r"^\..+\.tmp-(\d+)-[^/]+$")


def stale_temps(directory: Path) -> list[Path]:
    """Temporary siblings left by runs that are no longer alive."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _TMP.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(1))):
            out.append(p)
    return out


def sweep_stale(directory: Path) -> list[Path]:
    swept = stale_temps(directory)
    for p in swept:
        shutil.rmtree(p, ignore_errors=True)
    return swept


# ---------------------------------------------------------------- verification

@dataclass
class LedgerProblem:
    line: int
    message: str


@dataclass
class Verification:
    entries: int
    problems: list[LedgerProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unverified: bool = False  # checked without the operator key or the public key

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | Path, *, check_models: bool = True, key: bytes | None = None, pubkey: Any = None,
           receipts: Sequence[JsonObject] = ()) -> Verification:
    """Every line's bytes, hash, MAC (with the key) and chain link; each output model (present, its weights,
    its anchored copy of the entry); the head anchor; and anchored models whose entry is missing from the
    ledger (truncation, deletion). A file that cannot be read is an ``InputError`` (exit 2); problems are
    returned (exit 1)."""
    path = Path(path)
    rows = read_rows(path)
    report = Verification(len(rows))
    add = report.problems.append
    trusted = pubkey if pubkey is not None else _own_public_key(key)  # what heads and anchors must be signed with
    prev: str | None = GENESIS
    hashes = set()
    checked: set[Path] = set()  # the models whose anchors `_check_model` verified
    for row in rows:
        e = row.entry
        if row.problem or e is None:
            add(LedgerProblem(row.line, f"{row.problem}: the line was edited or damaged"))
            prev = None
            continue
        if e["entry_hash"] != entry_hash(e) or row.raw != line_of(e).encode("ascii"):
            add(LedgerProblem(row.line, "entry hash mismatch: the line was edited"))
        if key is not None and not hmac.compare_digest(str(e["mac"]), entry_mac(key, e)):
            add(LedgerProblem(row.line, "MAC invalid: the entry was not written with the operator's key"))
        if prev is not None and e["prev_hash"] != prev:
            add(LedgerProblem(row.line, "chain broken: prev_hash does not match the previous entry "
                                        "(a line was removed, reordered or inserted)"))
        prev = e["entry_hash"]
        hashes.add(e["entry_hash"])
        if check_models and (judged := _check_model(path, row.line, e, add, trusted)) is not None:
            checked.add(judged.resolve())
    _check_versions(rows, add)
    _check_head(path, rows, key, report, trusted)
    _check_receipts(rows, receipts, pubkey, report)
    if check_models:
        for where, problem in _sibling_anchors(path, hashes, trusted, checked):
            add(LedgerProblem(len(rows), f"model {where} {problem}"))
    if key is None:
        report.notes.append("MACs not checked: no operator key ($UNLEARN_LEDGER_KEY or the key file)")
    report.unverified = key is None and pubkey is None
    if report.unverified:
        report.notes.append("UNVERIFIED: neither the operator key nor the public key (--pubkey) was given, so a "
                            "rewritten ledger with recomputed hashes would pass")
    return report


def _own_public_key(key: bytes | None) -> Any:
    """With the operator key, the operator checks signatures with their own signing key (None without it)."""
    signer = load_signing_key() if key is not None else None
    return signer.public_key() if signer is not None else None


def _check_model(ledger: Path, line: int, e: JsonObject, add: Callable[[LedgerProblem], None],
                 trusted: Any = None) -> Path | None:
    """One entry's output model: present, its weights, its anchor (the entry, the signature); the model's
    directory when its anchor was judged (None when an earlier problem stopped the check)."""
    from unlearn.model import model_hash

    out = resolve_output(e["output"], ledger)
    if not out.exists():
        add(LedgerProblem(line, f"output model {show(e['output'])} is missing"))
        return None
    weights = out
    if e.get("unchanged"):  # the request needed no change: the receipt names the input weights
        if not isinstance(e.get("model_in"), str):
            add(LedgerProblem(line, "an unchanged-model entry without 'model_in'"))
            return None
        weights = resolve_output(e["model_in"], ledger)
    try:
        actual = model_hash(weights)
    except ModelError as exc:
        add(LedgerProblem(line, f"output model unreadable: {exc}"))
        return None
    if actual != e["model_after"]:
        add(LedgerProblem(line, f"model {show(str(weights))} no longer has the recorded weights "
                                f"(sha256 {actual[:12]}... != {e['model_after'][:12]}...)"))
    anchor = _read_anchor(out)
    if anchor is None or anchor.get("entry") != e:
        add(LedgerProblem(line, f"model {show(e['output'])} anchors a different entry: the ledger line was "
                                "rewritten (or the anchor removed)"))
    elif trusted is not None and "signature" in anchor and not anchor_signature_valid(trusted, anchor):
        add(LedgerProblem(line, f"model {show(e['output'])}: its anchor's signature is invalid (the back-pointer "
                                "or the entry was edited)"))
    return out


def _check_versions(rows: list[Row], add: Callable[[LedgerProblem], None]) -> None:
    """Model versions (entries of ``unlearn requests run``): one linear chain, each version's parent the one
    before it, its starting weights its parent's (incremental) or the original's, the cumulative sets its
    parent's plus its own requests, and no request or record answered twice."""
    prev: JsonObject | None = None
    for row in rows:
        e = row.entry
        if row.problem or e is None or "version" not in e:
            continue
        try:
            number, requests = int(e["version"]), dict(e["requests"])
            expected_number = 1 if prev is None else int(prev["version"]) + 1
            parent_requests = set(prev["cumulative_requests"]) if prev else set()
            parent_records = set(prev["cumulative_records"]) if prev else set()
            if number != expected_number or e.get("parent") != (prev["entry_hash"] if prev else None):
                add(LedgerProblem(row.line, f"version {number} does not follow version "
                                            f"{expected_number - 1} (parent missing, skipped or forked)"))
            start = {"incremental": prev["model_after"] if prev else e["original_sha256"],
                     "original": e["original_sha256"]}.get(e.get("strategy"))
            if e["model_before"] != start:
                origin = "parent's" if e.get("strategy") == "incremental" else "original"
                add(LedgerProblem(row.line, f"version {number} did not start from its {origin} weights"))
            if prev is not None and e["original_sha256"] != prev["original_sha256"]:
                add(LedgerProblem(row.line, f"version {number} names a different original model"))
            twice = parent_requests & set(requests)
            if twice:
                add(LedgerProblem(row.line, f"request(s) answered twice: {', '.join(sorted(map(show, twice)))}"))
            new_records = {i for ids in requests.values() for i in ids}
            repeated = len(parent_records & new_records) + sum(map(len, requests.values())) - len(new_records)
            if repeated:
                add(LedgerProblem(row.line, f"version {number}: {repeated} record(s) answered twice (by an earlier "
                                            "version or by two of its own requests)"))
            if (set(e["cumulative_requests"]) != parent_requests | set(requests)
                    or set(e["cumulative_records"]) != parent_records | new_records):
                add(LedgerProblem(row.line, f"version {number}: the cumulative sets are not its parent's plus "
                                            "its own requests"))
            if not new_records <= {r["id"] for r in e["records"]}:
                add(LedgerProblem(row.line, f"version {number} answers records it did not unlearn"))
        except (KeyError, TypeError, ValueError) as exc:
            add(LedgerProblem(row.line, f"version entry malformed ({type(exc).__name__}: {exc})"))
        prev = e


def _check_head(path: Path, rows: list[Row], key: bytes | None, report: Verification, pubkey: Any = None) -> None:
    head_file = _sidecar(path, ".head")
    last = len(rows)
    if not head_file.exists():
        if rows:
            report.problems.append(LedgerProblem(last, f"head anchor {head_file.name} is missing"))
        return
    try:
        head = read_json(head_file, SMALL_FILE)
        entries, head_hash, mac = head["entries"], head["head"], head["mac"]
        if not isinstance(entries, int) or isinstance(entries, bool) or not all(
                isinstance(v, str) and v.isascii() for v in (head_hash, mac)):
            raise TypeError("head fields")
    except (InputError, JSONProblem, KeyError, TypeError, ValueError):
        report.problems.append(LedgerProblem(last, f"head anchor {head_file.name} is damaged"))
        return
    actual = rows[-1].entry.get("entry_hash") if rows and rows[-1].entry else GENESIS
    if entries != len(rows) or head_hash != actual:
        report.problems.append(LedgerProblem(last, f"head anchor says {entries} entries ending {head_hash[:12]}..., "
                                                   f"the ledger has {len(rows)} ending {str(actual)[:12]}... "
                                                   "(truncated, appended to or rewritten)"))
    if key is not None and not hmac.compare_digest(mac, head_mac(key, entries, head_hash)):
        report.problems.append(LedgerProblem(last, "head anchor MAC invalid: rewritten without the key"))
    if key is not None and head.get("key_id") != key_id(key):
        report.problems.append(LedgerProblem(last, "head anchor names another operator key"))
    if pubkey is not None and (not signature_valid(pubkey, head)
                               or head.get("pubkey") != pubkey.public_bytes_raw().hex()):
        report.problems.append(LedgerProblem(last, "head anchor signature invalid: not signed with the operator's "
                                                   "signing key for this chain"))


def _check_receipts(rows: list[Row], receipts: Sequence[JsonObject], pubkey: Any, report: Verification) -> None:
    """Each requester's receipt (see `receipt_of`): its entry still at its line, the head count not gone back."""
    for i, r in enumerate(receipts, start=1):
        try:
            line, want, count = int(r["line"]), str(r["entry_hash"]), int(r["head"]["entries"])
        except (KeyError, TypeError, ValueError):
            report.problems.append(LedgerProblem(0, f"receipt {i} is malformed"))
            continue
        if pubkey is not None and not signature_valid(pubkey, r["head"]):
            report.problems.append(LedgerProblem(line, f"receipt {i}: its head signature is not the operator's"))
        row = rows[line - 1] if 1 <= line <= len(rows) else None
        if row is None or row.entry is None or row.entry.get("entry_hash") != want:
            report.problems.append(LedgerProblem(line, f"receipt {i}: entry {want[:12]}... is no longer at line "
                                                       f"{line} (the ledger was rolled back or rewritten)"))
        if len(rows) < count:
            report.problems.append(LedgerProblem(len(rows), f"receipt {i}: the ledger had {count} entries when it was "
                                                            f"issued, now {len(rows)} (rolled back)"))


def receipt_of(path: Path, entry: str | None = None) -> JsonObject:
    """What a requester keeps: the entry's hash and line and the signed head at export time. ``entry``: a
    prefix of the entry hash (default: the last entry)."""
    rows = [r for r in read_rows(path) if r.entry is not None]
    match = [r for r in rows if entry is None or str(r.entry["entry_hash"]).startswith(entry)]  # type: ignore[index]
    if not match or (entry is not None and len(match) > 1):
        raise InputError(f"no single entry {'starts with ' + show(entry) if entry else 'in the ledger'}", file=path)
    row = match[-1]
    assert row.entry is not None
    head = read_json(_sidecar(path, ".head"), SMALL_FILE)
    return {"ledger": str(path), "line": row.line, "entry_hash": row.entry["entry_hash"], "head": head}


def _sibling_anchors(ledger: Path, hashes: set[str], trusted: Any, checked: set[Path]) -> list[tuple[Path, str]]:
    """Problems of the model directories beside the ledger, hidden (dot) names included: an anchor that claims
    this ledger (by its back-pointer, or by its entry's output path) for an entry the ledger lacks (entries
    deleted, the ledger truncated or rolled back), and an anchor whose signature by ``trusted`` is invalid (its
    back-pointer or entry edited; not again for the ``checked`` models, whose entries `_check_model` judged).
    Only the directory an unfinished commit's journal names is left out."""
    me = ledger.resolve()
    pending = _pending_temp(ledger)
    try:
        siblings = sorted(p for p in me.parent.iterdir() if p.is_dir() and p.resolve() != pending)
    except OSError:
        return []
    found = []
    for d in siblings:
        anchor = _read_anchor(d)
        entry = anchor.get("entry") if anchor is not None else None
        if anchor is None or not isinstance(entry, dict) or not isinstance(entry.get("entry_hash"), str):
            continue
        if (trusted is not None and "signature" in anchor and d.resolve() not in checked
                and not anchor_signature_valid(trusted, anchor)):
            found.append((d, "has an anchor whose signature is invalid (its back-pointer or entry was edited)"))
        elif _claims(d, anchor, entry, me) and entry["entry_hash"] not in hashes:
            found.append((d, "is anchored to an entry missing from this ledger (entries were deleted or the ledger "
                             "truncated or rolled back)"))
    return found


def _claims(d: Path, anchor: JsonObject, entry: JsonObject, ledger: Path) -> bool:
    """Whether an anchor in ``d`` belongs to ``ledger``: its back-pointer resolves to it, or its entry's output
    path (relative to the ledger) is ``d``."""
    pointer, output = anchor.get("ledger"), entry.get("output")
    try:
        return ((isinstance(pointer, str) and "\0" not in pointer and (d / pointer).resolve() == ledger)
                or (isinstance(output, str) and "\0" not in output
                    and resolve_output(output, ledger).resolve() == d.resolve()))
    except (OSError, ValueError, RuntimeError):
        return False


def _pending_temp(ledger: Path) -> Path | None:
    """The temporary directory an unfinished commit's journal names (None without a readable journal)."""
    try:
        tmp = read_json(pending_journal(ledger)).get("tmp")
        return Path(tmp).resolve() if isinstance(tmp, str) and "\0" not in tmp else None
    except (InputError, JSONProblem, OSError, ValueError, RuntimeError, AttributeError):
        return None
