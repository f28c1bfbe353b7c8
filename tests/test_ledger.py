"""The deletion record under faults, concurrency, tampering, brute force and malformed input."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from unlearn import ledger
from unlearn.data import text_record
from unlearn.errors import UnlearnError

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "helpers" / "commit_worker.py"


def _spawn(ledger_path: Path, out: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(ledger_path), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


def _worker() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("commit_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if word in line:
            return seen
    raise AssertionError(f"never printed {word!r}: {seen}")


def _state(path: Path, outs: list[Path]) -> tuple[set[str], set[str]]:
    """(model directories present, outputs with a ledger entry)."""
    present = {o.name for o in outs if o.exists()}
    entries = {Path(r.entry["output"]).name for r in ledger.read_rows(path) if r.entry} if path.exists() else set()
    return present, entries


@pytest.mark.slow  # starts processes
def test_killed_at_every_commit_stage_leaves_nothing_or_both_or_a_journal_the_next_run_completes(
        tmp_path: Path) -> None:
    path, key = tmp_path / "ledger.jsonl", ledger.load_key(create=True)
    outs: list[Path] = []
    outcomes: dict[str, set[str]] = {}
    for rep in range(4):
        for stage in ledger.STAGES:
            out = tmp_path / f"m-{stage}-{rep}"
            outs.append(out)
            proc = _spawn(path, out, UNLEARN_COMMIT_PAUSE=stage)
            _wait_for(proc, f"PAUSED {stage}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            present, entries = _state(path, outs)
            journal = path.with_name(path.name + ".pending").exists()
            # never a model without a recoverable entry
            assert out.name not in present or out.name in entries or journal, (stage, present, entries)
            with ledger.locked(path):  # what `unlearn ledger recover` does
                done = ledger.recover(path, key)
                ledger.sweep_stale(tmp_path)
            present, entries = _state(path, outs)
            assert present == entries, (stage, done)  # after recovery: model and entry together, or neither
            outcomes.setdefault(stage, set()).add("committed" if out.name in present else "nothing")
            assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no leftovers of the dead run
            if path.exists():
                report = ledger.verify(path, key=key)
                assert report.ok, (stage, report.problems)
    # killed before the journal: nothing; after it: the commit completes
    assert outcomes == {"written": {"nothing"}, "locked": {"nothing"}, "journaled": {"nothing"},
                        "renamed": {"committed"}, "appended": {"committed"}, "anchored": {"committed"}}
    # a dead run's leftovers are swept by the next commit too
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".x.tmp-{dead.stdout.strip()}-abc").mkdir()
    proc = _spawn(path, tmp_path / "after")
    assert "COMMITTED" in _wait_for(proc, "COMMITTED") and proc.wait(timeout=30) == 0
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name and p.is_dir()]
    assert ledger.verify(path, key=key).ok and ledger.verify(path, key=key).entries == 13


def test_interrupt_during_the_commit_finishes_it_and_says_so(tmp_path: Path, bench) -> None:
    resume = tmp_path / "resume"
    cmd = [sys.executable, "-m", "unlearn.cli.main", "forget", "--preset", "tiny", "--max-steps", "2",
           "--out", str(tmp_path / "m")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "UNLEARN_COMMIT_PAUSE": "journaled",
                                 "UNLEARN_COMMIT_RESUME": str(resume)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(proc, "PAUSED journaled", timeout=300)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    resume.touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted after the commit" in out and "were both written" in out
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert ledger.verify(tmp_path / "unlearn-ledger.jsonl", key=ledger.load_key()).ok


def _append_many(args: tuple[str, int, int, str]) -> None:
    path, worker, count, barrier = args
    key = ledger.load_key()
    assert key is not None
    while not Path(barrier).exists():
        time.sleep(0.001)
    for i in range(count):
        content = ledger.make_entry(key, records=[text_record(f"{worker}-{i}", "x")], method="stress", config={},
                                    model_before="0" * 64)
        ledger.append_entry(Path(path), key, content, model_after="1" * 64, output=f"w{worker}-{i}")


@pytest.mark.slow  # starts processes
def test_concurrent_appends_make_one_valid_chain(tmp_path: Path) -> None:
    path, barrier, key = tmp_path / "ledger.jsonl", tmp_path / "go", ledger.load_key(create=True)
    workers, count = 4, 100
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        result = pool.map_async(_append_many, [(str(path), w, count, str(barrier)) for w in range(workers)])
        time.sleep(0.5)
        barrier.touch()
        result.get(timeout=300)
    report = ledger.verify(path, key=key, check_models=False)
    assert report.entries == workers * count and report.ok, report.problems[:3]
    outputs = [r.entry["output"] for r in ledger.read_rows(path)]
    assert len(set(outputs)) == workers * count


@pytest.mark.slow  # starts processes
def test_concurrent_commits_of_models(tmp_path: Path) -> None:
    path, key = tmp_path / "ledger.jsonl", ledger.load_key(create=True)
    procs = [_spawn(path, tmp_path / f"m{i}") for i in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    report = ledger.verify(path, key=key)
    assert report.ok and report.entries == 4


@pytest.fixture()
def small_ledger(tmp_path: Path) -> tuple[Path, bytes]:
    path, key = tmp_path / "ledger.jsonl", ledger.load_key(create=True)
    for i in range(3):  # in this process (the fast tier starts none); the commit protocol is the same
        _worker().commit_one(path, tmp_path / f"m{i}")
    assert ledger.verify(path, key=key).ok
    return path, key


def test_every_single_byte_substitution_is_detected_without_a_crash(small_ledger) -> None:
    path, key = small_ledger
    original = path.read_bytes()
    lines = original.split(b"\n")
    start = len(lines[0]) + 1  # the second line: all its positions
    values = [0x00, 0x0A, 0x20, 0x22, 0x2C, 0x30, 0x39, 0x41, 0x5C, 0x7B, 0x7D, 0x7F, 0x80, 0xC3, 0xFF]
    cases = 0
    for pos in range(start, start + len(lines[1])):
        for v in values:
            if original[pos] == v:
                continue
            data = bytearray(original)
            data[pos] = v
            path.write_bytes(bytes(data))
            report = ledger.verify(path, key=key, check_models=False)
            assert not report.ok, (pos, v)
            cases += 1
    path.write_bytes(original)
    assert cases > 2000


def test_structural_tampering_is_detected(small_ledger, tmp_path: Path) -> None:
    path, key = small_ledger
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)

    def problems(data: bytes, with_key: bool = True) -> list[str]:
        path.write_bytes(data)
        return [p.message for p in ledger.verify(path, key=key if with_key else None).problems]

    # truncation: dropping the last entries, or everything
    for data in (b"".join(lines[:2]), b"".join(lines[:1]), b""):
        for with_key in (True, False):
            found = problems(data, with_key)
            assert any("head anchor" in m for m in found) and any("missing from this ledger" in m for m in found)
    # a forged entry appended, chained correctly but written without the key
    last = json.loads(lines[-1])
    forged = {**last, "records": [{"id": "forged", "digest": "0" * 64}], "prev_hash": last["entry_hash"],
              "output": "m2"}
    forged["entry_hash"] = ledger.entry_hash(forged)
    found = problems(original + (ledger.line_of(forged) + "\n").encode())
    assert any("MAC invalid" in m for m in found) and any("head anchor" in m for m in found)
    # the whole chain rewritten (an id removed) and re-hashed: anchors in the models disagree
    rewritten, prev = [], ledger.GENESIS
    for raw in lines:
        e = json.loads(raw)
        e["records"] = [{"id": "someone-else", "digest": r["digest"]} for r in e["records"]]
        e["prev_hash"] = prev
        e["entry_hash"] = ledger.entry_hash(e)
        prev = e["entry_hash"]
        rewritten.append((ledger.line_of(e) + "\n").encode())
    for with_key in (True, False):
        found = problems(b"".join(rewritten), with_key)
        assert sum("anchors a different entry" in m for m in found) == 3
    # a non-string output and a missing model are problems, not crashes
    e = json.loads(lines[0])
    e["output"] = 123
    assert any("'output'" in m for m in problems((json.dumps(e) + "\n").encode() + b"".join(lines[1:])))
    path.write_bytes(original)
    os.rename(tmp_path / "m1", tmp_path / "moved")
    assert any("is missing" in m for m in problems(original))
    os.rename(tmp_path / "moved", tmp_path / "m1")
    # verified from another directory: paths are relative to the ledger, tampered weights are still caught
    (tmp_path / "m0" / "model.safetensors").write_bytes(b"tampered")
    cwd = os.getcwd()
    try:
        os.chdir("/")
        assert any("no longer has the recorded weights" in m for m in problems(original))
    finally:
        os.chdir(cwd)
    assert ledger.verify(path, key=key, check_models=False).ok


def test_the_cli_exit_codes_tell_tampered_from_unreadable(small_ledger, capsys) -> None:
    from unlearn.cli.main import main

    path, _ = small_ledger
    assert main(["ledger", "verify", str(path)]) == 0
    data = bytearray(path.read_bytes())
    data[10] = 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["ledger", "verify", str(path)]) == 1
    assert "not valid UTF-8" in capsys.readouterr().err
    assert main(["ledger", "verify", str(path.with_name("nope.jsonl"))]) == 2
    assert main(["ledger", "verify", str(path.parent)]) == 2


def test_a_digest_cannot_be_reproduced_from_the_ledger_alone(small_ledger) -> None:
    path, key = small_ledger
    entry = ledger.read_rows(path)[0].entry
    assert entry is not None
    stored, salt = entry["records"][0]["digest"], entry["salt"]
    text = f"secret text of {entry['records'][0]['id']}"  # short, known, low-entropy
    strings = {str(v) for v in entry.values() if isinstance(v, str)} | {salt, ""}
    guesses = {hashlib.sha256((salt + text).encode()).hexdigest(), hashlib.sha256(text.encode()).hexdigest(),
               hashlib.sha256((text + salt).encode()).hexdigest()}
    guesses |= {hmac.new(s.encode(), (salt + text).encode(), hashlib.sha256).hexdigest() for s in strings}
    guesses |= {hmac.new(bytes.fromhex(s), (salt + text).encode(), hashlib.sha256).hexdigest()
                for s in strings if len(s) % 2 == 0 and all(c in "0123456789abcdef" for c in s)}
    assert stored not in guesses
    assert ledger.record_digest(key, salt, text) == stored  # the operator, with the key, can check it
    assert key.hex() not in path.read_text() and "secret text" not in path.read_text()


def test_paths_are_checked_before_any_work(tmp_path: Path, tiny_model_dir: Path) -> None:
    cases = [
        (tiny_model_dir / "out", tmp_path / "l.jsonl", "must not be inside the input model"),
        (tmp_path / "out", tiny_model_dir / "l.jsonl", "must not be inside the input model"),
        (tmp_path / "out", tmp_path / "out", "must not be the output directory"),
        (tmp_path / "out", tmp_path / "out" / "l.jsonl", "must not be the output directory or inside it"),
        (tmp_path / "out", tmp_path, "is a directory"),
        (tiny_model_dir, tmp_path / "l.jsonl", "must not be inside the input model"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file" / "out", tmp_path / "l.jsonl", "not writable"))
    for out, led, message in cases:
        with pytest.raises(UnlearnError, match=message):
            ledger.check_paths(out, led, tiny_model_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"entry_hash": 1}\n')
    with pytest.raises(UnlearnError, match="bad.jsonl:1: damaged ledger line"):
        ledger.check_paths(tmp_path / "o2", bad, None)


# ---------------------------------------------------------------- fuzzing the readers

def _valid_lines() -> dict[str, list[str]]:
    return {
        "records": ['{"id": "a", "question": "Q?", "answer": "A."}', '{"id": 2, "text": "some text"}',
                    '{"id": "c", "prompt": "P", "gt": "continuation"}'],
        "manifest": ['{"id": "a", "source": "s", "sha256": "' + "a" * 64 + '"}'],
        "requests": ['{"id": "a"}', '{"text": "Q?\\nA."}'],
    }


def _mutations(rng: random.Random, line: str) -> bytes:
    raw = line.encode()
    kind = rng.randrange(14)
    if kind == 0:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
    if kind == 1:
        return raw[: rng.randrange(len(raw))]
    if kind == 2:
        return line.encode("utf-16")
    if kind == 3:
        return (line[:-1] + ', "x": "caf\u00e9"}').encode("latin-1")
    if kind == 4:
        return b"[" * rng.randrange(100, 5000) + b"]" * rng.randrange(0, 100)
    if kind == 5:
        return ('{"id": ' + "9" * rng.randrange(4301, 9000) + ', "text": "t"}').encode()
    if kind == 6:
        return line[:-1].encode() + b', "id": "dup"}'
    if kind == 7:
        return b'{"id": "n", "text": NaN}'
    if kind == 8:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 9:
        return b'{"id": [1], "text": {"a": 1}, "question": 5}'
    if kind == 10:
        return b"\xef\xbb\xbf" + raw  # a byte-order mark
    if kind == 11:
        return ('{"id": "\\u0000\\u001b[31m' + "x" * 5000 + '", "text": "t"}').encode()
    if kind == 12:
        return b'"just a string"'
    return raw + b"\n" + raw  # a duplicate record


def test_fuzzed_inputs_never_raise_anything_but_one_line_input_errors(tmp_path: Path) -> None:
    from unlearn.config import read_yaml_mapping
    from unlearn.data import load_manifest, load_records, load_requests

    rng = random.Random(0)
    manifest_path = tmp_path / "m.jsonl"
    manifest_path.write_text(_valid_lines()["manifest"][0] + "\n")
    manifest = load_manifest(manifest_path)
    readers = {"records": load_records, "manifest": load_manifest,
               "requests": lambda p: load_requests(p, manifest), "yaml": read_yaml_mapping,
               "ledger": lambda p: ledger.verify(p, check_models=False)}
    tried = failures = 0
    for i in range(450):
        kind = list(readers)[i % len(readers)]
        source = _valid_lines()["records" if kind in ("yaml", "ledger") else kind]
        lines = [_mutations(rng, rng.choice(source)) if rng.random() < 0.7 else rng.choice(source).encode()
                 for _ in range(rng.randrange(1, 4))]
        f = tmp_path / f"f{i}.jsonl"
        f.write_bytes(b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b""))
        tried += 1
        try:
            readers[kind](f)
        except UnlearnError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)[:200]
        except Exception as exc:
            failures += 1
            print(kind, type(exc).__name__, exc, f.read_bytes()[:80])
    assert tried >= 300 and failures == 0


def test_manifest_integrity(tmp_path: Path) -> None:
    from unlearn.data import check_against_manifest, check_holdout, load_manifest, load_records, text_hash

    rec = tmp_path / "r.jsonl"
    rec.write_text('{"id": "a", "text": "the text"}\n')
    good = tmp_path / "m.jsonl"
    good.write_text(json.dumps({"id": "a", "source": "s", "sha256": text_hash("the text")}) + "\n")
    other = tmp_path / "m2.jsonl"
    other.write_text(json.dumps({"id": "a", "source": "s", "sha256": text_hash("other")}) + "\n")
    check_against_manifest(load_records(rec), load_manifest(good), rec)
    with pytest.raises(UnlearnError, match="r.jsonl: record 'a' differs from the text the manifest hashed"):
        check_against_manifest(load_records(rec), load_manifest(other), rec)
    with pytest.raises(UnlearnError, match="not in the training manifest"):
        check_against_manifest(load_records(rec), {}, rec)
    with pytest.raises(UnlearnError, match="is a training member"):
        check_holdout(load_records(rec), load_manifest(good), rec)
    hexbad = tmp_path / "m3.jsonl"
    hexbad.write_text('{"id": "a", "source": "s", "sha256": "XYZ"}\n')
    with pytest.raises(UnlearnError, match="m3.jsonl:1 field 'sha256': must be 64 lowercase hex digits"):
        load_manifest(hexbad)
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"id": "a", "text": "x", "text": "y"}\n')
    with pytest.raises(UnlearnError, match="d.jsonl:1: duplicate key 'text'"):
        load_records(dup)


def test_recovery_removes_only_a_temporary_directory_it_can_prove_it_created(tmp_path: Path) -> None:
    path, out = tmp_path / "ledger.jsonl", tmp_path / "model-v2"
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    entry = {"prev_hash": "0" * 64, "entry_hash": "1" * 64}

    def recover_with(tmp: Path, token: str | None) -> str | None:
        journal = {"out": str(out), "tmp": str(tmp), "entry": entry, **({"token": token} if token else {})}
        path.with_name(path.name + ".pending").write_text(json.dumps(journal))
        with ledger.locked(path):
            return ledger.recover(path, None)

    fake = tmp_path / f".{out.name}.tmp-1-abcd"  # the right name and place, but no token inside
    fake.mkdir()
    lookalike = tmp_path / f".{out.name}.tmp-1-link"
    lookalike.symlink_to(victim, target_is_directory=True)
    for tmp, token in [(victim, None), (victim, "t"), (fake, "t"), (lookalike, "t")]:
        done = recover_with(tmp, token)
        assert done is not None and f"left {tmp} in place" in done
        assert not path.with_name(path.name + ".pending").exists()  # the journal is answered, not left to block
    assert (victim / "data.txt").read_text() == "keep me" and fake.is_dir() and lookalike.is_symlink()
    (fake / ledger.TEMP_TOKEN).write_text("t")
    assert "nothing of it was kept" in recover_with(fake, "t") and not fake.exists()  # a real one is removed
    real = tmp_path / f".{out.name}.tmp-2-wxyz"
    real.mkdir()
    (real / ledger.TEMP_TOKEN).write_text("t")
    assert "left" in recover_with(real, "other token") and real.exists()  # another commit's token


def test_ledger_recover_on_a_missing_ledger_creates_nothing(tmp_path: Path, capsys) -> None:
    from unlearn.cli.main import main

    missing = tmp_path / "typo" / "ledger.jsonl"
    assert main(["ledger", "recover", str(missing)]) == 2
    assert not (tmp_path / "typo").exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_the_verifier_and_readers_neither_crash_nor_hang_on_structural_inputs(tmp_path: Path, capsys,
                                                                             monkeypatch) -> None:
    """A non-ASCII MAC, a huge or fractional entry count, a sibling anchor pointing through a NUL or a list, a FIFO
    as head / journal / key, a device as the head: each is a finding or one error line, never a crash or a hang."""
    from unlearn.cli.main import main

    path, key = tmp_path / "ledger.jsonl", b"k" * 32
    entry = ledger.finalise(key, {"records": []}, prev_hash=ledger.GENESIS, model_after="a" * 64, output="m")
    path.write_bytes((json.dumps(entry) + "\n").encode())
    head = path.with_name(path.name + ".head")
    for bad in [json.dumps({"entries": 1, "head": entry["entry_hash"], "mac": "\u00e9\u00e9"}),
                '{"entries": 1e999, "head": "x", "mac": "y"}', '{"entries": 1.5, "head": "x", "mac": "y"}',
                '{"entries": [1], "head": "x", "mac": "y"}']:
        head.write_text(bad)
        report = ledger.verify(path, key=key)
        assert not report.ok and any("head anchor" in p.message for p in report.problems), bad
    for ref in ["a\u0000b", ["x"], {"y": 1}]:
        sibling = tmp_path / f"s{len(str(ref))}"
        sibling.mkdir()
        (sibling / ledger.ANCHOR).write_text(json.dumps({"ledger": ref, "entry": {"entry_hash": ["h"]}}))
        ledger.verify(path, key=key)  # no exception
    head.unlink()
    os.mkfifo(head)
    assert not ledger.verify(path, key=key).ok  # a FIFO head is damaged, not a hang
    head.unlink()
    head.symlink_to("/dev/zero")
    assert not ledger.verify(path, key=key).ok
    head.unlink()
    journal = path.with_name(path.name + ".pending")
    os.mkfifo(journal)
    with pytest.raises(ledger.InputError, match="unreadable commit journal"), ledger.locked(path):
        ledger.recover(path, key)
    journal.unlink()
    fifo_key = tmp_path / "key"
    os.mkfifo(fifo_key)
    monkeypatch.delenv(ledger.KEY_ENV, raising=False)
    monkeypatch.setenv(ledger.KEY_FILE_ENV, str(fifo_key))
    with pytest.raises(ledger.InputError, match="key: not a regular file"):
        ledger.load_key()
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["ledger", "show", str(binary)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_nothing_is_appended_to_a_forged_ledger(tmp_path: Path, monkeypatch) -> None:
    path, key, forger = tmp_path / "ledger.jsonl", b"k" * 32, b"f" * 32
    monkeypatch.setenv(ledger.KEY_ENV, key.hex())
    ledger.append_entry(path, key, {"records": [], "model_before": "0" * 64}, model_after="a" * 64, output="m1")
    n, head = ledger.head_of(path)  # a forger without the key appends a well-formed entry and re-anchors the head
    forged = ledger.finalise(forger, {"records": [], "model_before": "0" * 64}, prev_hash=head, model_after="b" * 64,
                             output="m2")
    with path.open("a") as fh:
        fh.write(ledger.line_of(forged) + "\n")
    ledger.write_head(path, forger, n + 1, forged["entry_hash"])
    before = path.read_bytes()
    with pytest.raises(ledger.InputError, match=r"fails verification \(MAC invalid"):
        ledger.append_entry(path, key, {"records": [], "model_before": "0" * 64}, model_after="c" * 64, output="m3")
    with pytest.raises(ledger.InputError, match="fails verification"):
        ledger.check_paths(tmp_path / "new-model", path, None)  # refused before any work
    assert path.read_bytes() == before


def _forged_head(path: Path, entries: list[dict]) -> None:
    """A head for ``entries`` signed with a key that is not the operator's (what a forger can do)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer, when = Ed25519PrivateKey.generate(), "2026-01-01T00:00:00Z"
    last = entries[-1]["entry_hash"] if entries else ledger.GENESIS
    head = {"entries": len(entries), "head": last, "time": when, "key_id": "x", "mac": "0",
            "pubkey": signer.public_key().public_bytes_raw().hex(),
            "signature": signer.sign(ledger.head_message(len(entries), last, when)).hex()}
    path.with_name(path.name + ".head").write_text(json.dumps(head) + "\n")


def _write(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(ledger.line_of(e) + "\n" for e in entries))


def _rechained(entries: list[dict], edit) -> list[dict]:
    out, prev = [], ledger.GENESIS
    for e in entries:
        content = {k: v for k, v in e.items() if k not in ("entry_hash", "prev_hash", "mac", "model_after", "output")}
        content = edit(content)
        new = ledger.finalise(b"f" * 32, content, prev_hash=prev, model_after=e["model_after"], output=e["output"])
        out.append(new)
        prev = new["entry_hash"]
    return out


def test_the_public_key_alone_detects_every_tampering_and_receipts_catch_a_rollback(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    from unlearn.cli.main import main

    key = ledger.load_key(create=True)
    path = tmp_path / "ledger.jsonl"
    for i in range(3):
        content = {"records": [{"id": f"r{i}", "digest": "d"}], "model_before": "0" * 64}
        ledger.append_entry(path, key, content, model_after=f"{i}" * 64, output=f"m{i}")
    pub_file = tmp_path / "operator.pub"
    pub_file.write_text(ledger.public_key_hex(ledger.load_signing_key()) + "\n")
    pub = ledger.load_public_key(str(pub_file))
    good, head = path.read_text(), path.with_name(path.name + ".head").read_text()
    entries = [json.loads(line) for line in good.splitlines()]
    receipt = ledger.receipt_of(path)  # the third request's receipt
    assert ledger.verify(path, check_models=False, pubkey=pub, receipts=[receipt]).ok

    def tampered(name: str, act) -> None:
        path.write_text(good)
        path.with_name(path.name + ".head").write_text(head)
        act()
        report = ledger.verify(path, check_models=False, pubkey=pub, receipts=[receipt])
        assert not report.ok, name

    tampered("truncation", lambda: _write(path, entries[:2]))
    tampered("truncation, head re-signed", lambda: (_write(path, entries[:2]), _forged_head(path, entries[:2])))
    tampered("reordering", lambda: _write(path, [entries[1], entries[0], entries[2]]))
    forged = _rechained(entries, lambda c: c)
    extra = ledger.finalise(b"f" * 32, {"records": [{"id": "x", "digest": "d"}], "model_before": "0" * 64},
                            prev_hash=entries[-1]["entry_hash"], model_after="9" * 64, output="m9")
    tampered("forged append", lambda: (_write(path, [*entries, extra]), _forged_head(path, [*entries, extra])))
    edited = _rechained(entries, lambda c: {**c, "records": [{"id": "someone-else", "digest": "d"}]})
    tampered("re-hashed rewrite", lambda: (_write(path, edited), _forged_head(path, edited)))
    last = {"records": [{"id": "r2", "digest": "d"}], "model_before": "0" * 64}
    weights = [*entries[:2], ledger.finalise(b"f" * 32, last, prev_hash=entries[1]["entry_hash"], model_after="e" * 64,
                                             output="m2")]
    tampered("replaced weights", lambda: (_write(path, weights), _forged_head(path, weights)))
    tampered("forged, same hashes", lambda: (_write(path, forged), _forged_head(path, forged)))
    # a rollback to a genuine older state (a backup of ledger and head) is genuine up to there: the receipt fails
    backup = tmp_path / "backup.jsonl"
    _write(backup, entries[:2])
    ledger.write_head(backup, key, 2, entries[1]["entry_hash"])
    older_head = backup.with_name(backup.name + ".head").read_text()
    assert ledger.verify(backup, check_models=False, pubkey=pub).ok  # genuine, only old
    head_file = path.with_name(path.name + ".head")
    tampered("rollback", lambda: (_write(path, entries[:2]), head_file.write_text(older_head)))
    # the CLI: without either key a consistent ledger is UNVERIFIED (exit 3), a forged one never exits 0
    monkeypatch.delenv(ledger.KEY_ENV, raising=False)
    monkeypatch.setenv(ledger.KEY_FILE_ENV, str(tmp_path / "no-such-key"))
    path.write_text(good)
    path.with_name(path.name + ".head").write_text(head)
    assert main(["ledger", "verify", "--no-models", str(path)]) == 3
    assert main(["ledger", "verify", "--no-models", "--accept-unverified", str(path)]) == 0
    assert main(["ledger", "verify", "--no-models", "--pubkey", str(pub_file), str(path)]) == 0
    _write(path, forged)
    _forged_head(path, forged)
    assert main(["ledger", "verify", "--no-models", str(path)]) == 3  # never 0 unless asked to accept that
    assert main(["ledger", "verify", "--no-models", "--pubkey", str(pub_file), str(path)]) == 1


def test_the_public_key_alone_catches_every_rollback_that_leaves_the_later_models_beside_the_ledger(
        tmp_path: Path, monkeypatch) -> None:
    """#30 item 1, with models: a backup of ledger and head restored, and the later model folders renamed to
    dot-names, to the commit's temporary-name pattern, or their anchors' back-pointer edited. The anchors are
    signed (back-pointer and entry hash), hidden folders are read, and only the folder an unfinished commit's
    journal names is skipped; the untouched ledger verifies."""
    monkeypatch.setenv(ledger.KEY_FILE_ENV, str(tmp_path / "keys" / "operator.key"))
    worker = _worker()
    path = tmp_path / "ledger.jsonl"
    outs = [tmp_path / f"m{i}" for i in range(3)]
    for out in outs[:2]:
        worker.commit_one(path, out)
    backup_lines, backup_head = path.read_text(), path.with_name(path.name + ".head").read_text()
    worker.commit_one(path, outs[2])
    pub = ledger.load_signing_key().public_key()
    good, head = path.read_text(), path.with_name(path.name + ".head").read_text()
    assert ledger.verify(path, pubkey=pub).ok
    anchor_file = outs[2] / ledger.ANCHOR
    anchor_text = anchor_file.read_text()

    def rolled_back(hide) -> list[str]:
        path.write_text(backup_lines)
        path.with_name(path.name + ".head").write_text(backup_head)
        where = hide()
        problems = [p.message for p in ledger.verify(path, pubkey=pub).problems]
        where.rename(outs[2]) if where != outs[2] else None  # undo
        anchor_file.write_text(anchor_text)
        path.write_text(good)
        path.with_name(path.name + ".head").write_text(head)
        return problems

    def pointer_edited() -> Path:
        anchor = json.loads(anchor_text)
        anchor["ledger"] = "../elsewhere/ledger.jsonl"
        anchor_file.write_text(json.dumps(anchor))
        return outs[2]

    def pointer_and_signature_removed() -> Path:
        anchor = json.loads(anchor_text)
        anchor = {"ledger": "../elsewhere/ledger.jsonl", "entry": anchor["entry"]}
        anchor_file.write_text(json.dumps(anchor))
        return outs[2]

    variants = {"renamed to a dot-name": lambda: outs[2].rename(tmp_path / ".m2") or tmp_path / ".m2",
                "renamed like a commit's temporary": lambda: outs[2].rename(tmp_path / ".m2.tmp-1-abcd") or (
                    tmp_path / ".m2.tmp-1-abcd"),
                "back-pointer edited": pointer_edited,
                "back-pointer edited, signature stripped": pointer_and_signature_removed}
    for name, hide in variants.items():
        problems = rolled_back(hide)
        assert any("missing from this ledger" in m or "signature is invalid" in m for m in problems), (name, problems)
    assert ledger.verify(path, pubkey=pub).ok  # everything undone: genuine again
    # an anchor whose signature is fine but names another ledger (a sibling store's model) is not a problem
    other = tmp_path / "other" / "ledger.jsonl"
    other.parent.mkdir()
    worker.commit_one(other, tmp_path / "theirs")
    assert ledger.verify(path, pubkey=pub).ok and ledger.verify(other, pubkey=pub).ok


def test_an_edited_anchor_of_a_ledger_model_is_reported_once(tmp_path: Path, monkeypatch) -> None:
    """The model's own check judges its anchor's signature; the scan of the folders beside the ledger does not
    report the same anchor a second time."""
    monkeypatch.setenv(ledger.KEY_FILE_ENV, str(tmp_path / "keys" / "operator.key"))
    path, out = tmp_path / "ledger.jsonl", tmp_path / "m0"
    _worker().commit_one(path, out)
    anchor = json.loads((out / ledger.ANCHOR).read_text())
    anchor["signature"] = "00" * 64
    (out / ledger.ANCHOR).write_text(json.dumps(anchor))
    problems = [p.message for p in ledger.verify(path, pubkey=ledger.load_signing_key().public_key()).problems]
    assert len(problems) == 1 and "signature is invalid" in problems[0], problems
