"""Seeded fuzz of every reader and of the CLI on malformed input: counts per outcome.

In-process: malformed record files (JSON Lines, JSON arrays, CSV: each case built malformed on purpose, so
acceptance is a failure), yaml configs and templates, request stores, adapter configs, ledgers with one byte
edited (the verifier must report them, never crash) and held-out sets too small to split into roles. CLI: bad
flags and files through ``unlearn.cli.main``. Every case runs under a 10 s alarm. Outcomes: ``error`` (one
clean input error), ``accepted`` (a malformed input taken: a failure), ``traceback`` (any other exception),
``hang``, ``internal`` (a CLI "internal error" line).

    python tests/benchmarks/reader_fuzz.py [--cases 1500] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from unlearn import ledger
from unlearn.config import read_yaml_mapping
from unlearn.data import load_records, parse_format
from unlearn.errors import UnlearnError
from unlearn.lora import base_of
from unlearn.store import Store

GOOD = {"question": "Where was Kalo Venra born?", "answer": "In Tolmere.", "person": "p1"}
# (how a record goes wrong, a function from a valid JSON text of one record to a malformed one)
BREAKS: list[tuple[str, Callable[[str], str]]] = [
    ("nan", lambda t: t.replace('"In Tolmere."', "NaN")),
    ("infinity", lambda t: t.replace('"p1"', "Infinity")),
    ("huge float", lambda t: t[:-1] + ', "x": 1e999}'),
    ("duplicate key", lambda t: t[:-1] + ', "answer": "b"}'),
    ("deep", lambda t: t[:-1] + ', "x": ' + "[" * 80 + "]" * 80 + "}"),
    ("lone surrogate", lambda t: t.replace("Tolmere", "\\ud800")),
    ("big int", lambda t: t[:-1] + ', "n": ' + "7" * 5000 + "}"),
    ("truncated", lambda t: t[: len(t) // 2]),
    ("not an object", lambda t: "[1, 2]"),
    ("question a number", lambda t: t.replace('"Where was Kalo Venra born?"', "3")),
    ("group a dict", lambda t: t[:-1] + ', "group": {"a": 1}}'),
    ("perturbed a dict", lambda t: t[:-1] + ', "perturbed_answer": {"a": 1}}'),
    ("no answer", lambda t: json.dumps({"question": "q"})),
    ("bad escape", lambda t: t.replace("Tolmere", "\\x41")),
]


def record_file(rng: random.Random, root: Path, i: int) -> Path:
    """A file of valid records with one malformed one, as JSON Lines, a JSON array or (for some breaks) CSV."""
    name, brk = rng.choice(BREAKS)
    good = [json.dumps({**GOOD, "id": f"r{k}"}) for k in range(rng.randint(0, 5))]
    bad = brk(json.dumps({**GOOD, "id": "bad"}))
    rows = good[:]
    rows.insert(rng.randint(0, len(rows)), bad)
    kind = rng.choice(["jsonl", "json", "json"])
    path = root / f"case{i}.{kind}"
    text = "\n".join(rows) + "\n" if kind == "jsonl" else "[" + ",\n".join(rows) + "]"
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:  # invalid UTF-8 somewhere in the bad row
        at = data.find(b"bad")
        data = data[:at] + b"\xff\xfe" + data[at:]
    path.write_bytes(data)
    return path


def csv_file(rng: random.Random, root: Path, i: int) -> Path:
    bad = rng.choice([b"question,answer\nq,\xff\n", b"question,answer\nq,a\x00b\n",
                      b"question,answer\nq," + b'"' + b"x" * 200_000 + b'"\n', b"question,answer\nq,a,extra\n",
                      b"question,answer\nq\n", b'question,answer\n"q,a\n'])
    path = root / f"case{i}.csv"
    path.write_bytes(bad)
    return path


def yaml_file(rng: random.Random, root: Path, i: int) -> Path:
    body = rng.choice(["a: 1\na: 2\n", "[1, 2]\n", "a: [\n", "\xff", "a: !!python/object:os.system ls\n",
                       "kind: custom\nresponse: ' {answer}'\n", "prompt: '{question.__class__}'\n",
                       "prompt: [1]\n", "kind: fancy\nprompt: '{question}'\n", "&a [*a]\n" * 3])
    path = root / f"case{i}.yaml"
    path.write_bytes(body.encode("utf-8", "surrogateescape") if body != "\xff" else b"\xff")
    return path


def read_yaml_template(path: Path) -> object:
    """A yaml case (every one malformed) read as a template file when it speaks of one, else as a mapping."""
    text = path.read_bytes().decode("utf-8", "replace")
    return parse_format(path) if "prompt" in text or "kind" in text else read_yaml_mapping(path)


def ledger_case(rng: random.Random, root: Path, i: int, key: bytes) -> Callable[[], object]:
    """A real two-entry ledger with one byte of the ledger or its head changed: verify must report it."""
    d = root / f"ledger{i}"
    d.mkdir()
    path = d / "ledger.jsonl"
    for k in range(2):
        ledger.append_entry(path, key, {"records": [{"id": f"r{k}", "digest": "d"}], "model_before": "0" * 64},
                            model_after=f"{k}" * 64, output=f"m{k}")
    target = rng.choice([path, path.with_name(path.name + ".head")])
    data = bytearray(target.read_bytes())
    at = rng.randrange(len(data))
    new = rng.randrange(256)
    while new == data[at]:
        new = rng.randrange(256)
    before = data[at]
    data[at] = new
    target.write_bytes(bytes(data))
    edit = f"{target.name}[{at}] {bytes([before])!r}->{bytes([new])!r} in {bytes(data[max(0, at - 12):at + 12])!r}"

    def run() -> object:
        report = ledger.verify(path, check_models=False, key=key)
        if report.ok:
            raise AssertionError(f"an edited ledger verified: {edit}")
        raise UnlearnError(f"reported: {report.problems[0].message}")  # the edit found: the clean outcome

    return run


def store_case(rng: random.Random, root: Path, i: int) -> Callable[[], object]:
    store = Store(root / f"store{i}")
    store.create({"builtin": True, "model": "m", "data": []})
    (store.root / "store.json").write_text(rng.choice(['{"model": 3}', "[1]", "{", '{"builtin": true}',
                                                        '{"builtin": true, "model": "m", "data": "abc"}']))
    return store.config


def adapter_case(rng: random.Random, root: Path, i: int) -> Callable[[], object]:
    d = root / f"adapter{i}"
    d.mkdir()
    (d / "adapter_config.json").write_text(rng.choice(["[1]", '{"base_model_name_or_path": {"a": 1}}', "{", '"x"',
                                                        '{"base_model_name_or_path": ""}']))
    return lambda: base_of(d)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def outcome(fn: Callable[[], object]) -> str:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        fn()
        return "accepted"
    except Hang:
        return "hang"
    except UnlearnError:  # InputError, ConfigError, ModelError: one clean line at the CLI
        return "error"
    except AssertionError as exc:
        if str(exc):
            print(f"  accepted: {exc}")
        return "accepted"
    except Exception as exc:
        return f"traceback ({type(exc).__name__})"
    finally:
        signal.alarm(0)


CLI_CASES = [
    ["forget", "--set", "lr=abc", "--dry-run"], ["forget", "--set", "bogus=1", "--dry-run"],
    ["forget", "--set", "max_steps=0", "--dry-run"], ["forget", "--method", "nope", "--dry-run"],
    ["forget", "--margin", "7", "--dry-run"], ["forget", "--config", "{yaml}", "--dry-run"],
    ["audit", "--device", "bogus"], ["audit", "--scores", "loss,bogus"], ["audit", "--k", "2"],
    ["audit", "--relearn-steps", "0"], ["audit", "--relearn-lr", "-1"], ["audit", "--batch-size", "0"],
    ["audit", "--template", "{question.__class__}"], ["audit", "--template", "Q: {question} A: {answer}"],
    ["audit", "--template", "{0}{question}"], ["audit", "--template", "{question"], ["audit", "--attacks", "x"],
    ["audit", "--members", "{records}", "--nonmembers", "{records}", "--model", "{dir}"],
    ["ledger", "verify", "{records}"], ["ledger", "show", "{binary}"], ["ledger", "recover", "{missing}"],
    ["ledger", "verify", "--pubkey", "zz", "{records}"], ["ledger", "receipt", "{missing}", "--out", "{missing2}"],
    ["manifest", "{records}", "--out", "{missing2}"], ["requests", "list", "--store", "{dir}"],
    ["compare", "--config", "nope"], ["info", "{dir}"], ["worst-case", "--k", "0"],
    ["attribute", "--model", "m", "--train", "a", "--test", "t", "--steps", "0"],
]


def cli_outcomes(rng: random.Random, root: Path, count: int) -> collections.Counter:
    from unlearn.cli.main import main

    counts: collections.Counter = collections.Counter()
    for i in range(count):
        argv = rng.choice(CLI_CASES)
        files = {"{yaml}": str(yaml_file(rng, root, 10_000 + i)), "{records}": str(record_file(rng, root, 20_000 + i)),
                 "{binary}": str(root / "binary.bin"), "{missing}": str(root / f"no/such{i}"),
                 "{missing2}": str(root / f"new{i}.json"), "{dir}": str(root / "emptydir")}
        argv = [files.get(a, a) for a in argv]
        err = io.StringIO()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(20)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main([*argv, "--preset", "tiny", "--cache", str(root / "no-cache")])
            text = err.getvalue()
            if "internal error" in text or code not in (1, 2):
                print(f"  cli {argv[:4]}: exit {code}: {text.strip().splitlines()[-1][:150] if text.strip() else ''}")
            counts["internal" if "internal error" in text else
                   "error" if code == 2 and text.strip().count("\n") == 0 else
                   "reported" if code == 1 and argv[:2] == ["ledger", "verify"] else
                   "accepted" if code in (0, 3) else f"exit {code}"] += 1
        except Hang:
            counts["hang"] += 1
        except SystemExit as exc:  # argparse: usage + one error line, exit 2
            counts["error" if exc.code == 2 else f"exit {exc.code}"] += 1
        except Exception as exc:
            counts[f"traceback ({type(exc).__name__})"] += 1
        finally:
            signal.alarm(0)
    return counts


def holdout_case(rng: random.Random):
    """A held-out set the roles cannot be assigned from: 0-6 records of one person, or one record alone."""
    from unlearn.data import qa_record
    from unlearn.splits import Splits

    n = rng.randint(0, 6)
    meta = {"person": "p"} if rng.random() < 0.8 or n > 1 else {}
    records = [qa_record(f"h{j}", f"q{j}?", "a.", **meta) for j in range(n)]
    return lambda: Splits.of(records, [], seed=rng.randint(0, 9), forget=[qa_record("f", "q?", "a.")])


def run_cases(cases: int, cli: int, seed: int) -> tuple[dict[str, collections.Counter], collections.Counter]:
    """``cases`` in-process cases (by reader) and ``cli`` CLI cases, seeded: their outcome counts."""
    rng = random.Random(seed)
    key = b"k" * 32
    saved = os.environ.get(ledger.SIGNING_KEY_FILE_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ[ledger.SIGNING_KEY_FILE_ENV] = str(root / "signing.key")  # never the operator's own
        try:
            (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
            (root / "emptydir").mkdir()
            makers = [("records", lambda i: (lambda p=record_file(rng, root, i): load_records(p))),
                      ("csv", lambda i: (lambda p=csv_file(rng, root, i): load_records(p))),
                      ("yaml", lambda i: (lambda p=yaml_file(rng, root, i): read_yaml_template(p))),
                      ("ledger", lambda i: ledger_case(rng, root, i, key)),
                      ("store", lambda i: store_case(rng, root, i)),
                      ("adapter", lambda i: adapter_case(rng, root, i)),
                      ("holdout", lambda i: holdout_case(rng))]
            per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            for i in range(cases):
                kind, make = rng.choices(makers, [8, 2, 2, 3, 1, 1, 1])[0]
                per[kind][outcome(make(i))] += 1
            return per, cli_outcomes(rng, root, cli)
        finally:
            if saved is None:
                os.environ.pop(ledger.SIGNING_KEY_FILE_ENV, None)
            else:
                os.environ[ledger.SIGNING_KEY_FILE_ENV] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=1500)
    ap.add_argument("--cli", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    per, cli = run_cases(args.cases, args.cli, args.seed)
    total: collections.Counter = collections.Counter()
    for kind, counts in sorted(per.items()):
        print(f"{kind:8} {sum(counts.values()):5d}  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        total.update(counts)
    print(f"{'in-proc':8} {sum(total.values()):5d}  " + ", ".join(f"{k}: {v}" for k, v in sorted(total.items())))
    print(f"{'cli':8} {sum(cli.values()):5d}  " + ", ".join(f"{k}: {v}" for k, v in sorted(cli.items())))


if __name__ == "__main__":
    main()
