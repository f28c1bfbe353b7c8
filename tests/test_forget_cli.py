"""`unlearn forget` end to end, the ledger, bad input and interrupt safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_lines
from unlearn.cli.main import main
from unlearn.ledger import verify
from unlearn.model import model_hash

pytestmark = pytest.mark.slow


def _forget(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["forget", "--preset", "tiny", "--out", str(tmp_path / name), "--quiet", *extra]


def _tree_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_forget_builtin_person_end_to_end(tmp_path: Path, bench, capsys) -> None:
    target_hash = model_hash(bench.target)
    assert main(_forget(tmp_path, "m1", "--method", "npo", "--json")) == 0
    receipt = json.loads(capsys.readouterr().out)
    out = tmp_path / "m1"
    assert receipt["steps"] > 0 and receipt["stop_reason"] in ("forget_undetectable", "resolution_limit", "max_steps",
                                                               "utility_drop", "over_unlearned")
    assert receipt["after"]["forget_auc"] < receipt["before"]["forget_auc"]
    assert receipt["before"]["forget_p"] < 0.05
    assert len(receipt["request"]["ids"]) == 10  # one built-in person, ten facts
    assert json.loads((out / "unlearn_receipt.json").read_text())["steps"] == receipt["steps"]
    assert model_hash(bench.target) == target_hash  # the input model is untouched
    # No deleted text anywhere in the output or the ledger; ids and salted hashes only.
    forgotten = [r for r in bench.split("train") if r.id in set(receipt["request"]["ids"])]
    written = _tree_text(out) + (tmp_path / "unlearn-ledger.jsonl").read_text()
    for r in forgotten:
        assert r.answer not in written and r.question not in written
        assert r.meta["name"] not in written
    report = verify(tmp_path / "unlearn-ledger.jsonl")
    assert report.entries == 1 and report.problems == []


@pytest.mark.parametrize("method", ["newton", "iau", "soul"])
def test_forget_with_second_order_methods(tmp_path: Path, bench, capsys, method: str) -> None:
    assert main(_forget(tmp_path, method, "--method", method, "--max-steps", "3", "--json")) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["method"] == method and 1 <= receipt["steps"] <= 3
    assert receipt["after"]["forget_nll"] > receipt["before"]["forget_nll"]
    if method == "newton":
        cert = receipt["method_stats"]["certificate"]
        assert cert["retain_grad_norm_after"] > 0 and cert["last_step"]["update_norm"] > 0


def test_ledger_chain_and_tamper_detection(tmp_path: Path, bench, capsys) -> None:
    req = write_lines(tmp_path / "req.jsonl", ['{"id": "p0003-pet"}', '{"id": "p0003-pet"}', '{"id": "p0004-food"}'])
    for name in ("a", "b"):
        assert main(_forget(tmp_path, name, "--method", "graddiff", "--requests", str(req), "--max-steps", "3")) == 0
    ledger = tmp_path / "unlearn-ledger.jsonl"
    assert main(["ledger", "verify", str(ledger)]) == 0
    lines = ledger.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2 and json.loads(lines[1])["prev_hash"] == json.loads(lines[0])["entry_hash"]
    original = ledger.read_bytes()
    for line_no, line in enumerate(lines):
        offset = sum(len(x) for x in lines[:line_no])
        for pos in range(len(line) - 1):  # every byte except the newline
            data = bytearray(original)
            data[offset + pos] = data[offset + pos] ^ 0x01
            ledger.write_bytes(bytes(data))
            problems = verify(ledger, check_models=False).problems
            assert problems and problems[0].line == line_no + 1, (line_no, pos, chr(original[offset + pos]))
    ledger.write_bytes(original)
    ledger.write_bytes(b"".join(lines[1:]))  # a removed entry breaks the chain
    capsys.readouterr()
    assert main(["ledger", "verify", str(ledger)]) == 1
    assert ":1: chain broken" in capsys.readouterr().err
    ledger.write_bytes(original)
    (tmp_path / "a" / "model.safetensors").write_bytes(b"tampered")  # a swapped model is caught
    assert [p.line for p in verify(ledger).problems] == [1]


@pytest.mark.parametrize("lines, message", [
    (['{"id": "p0003-pet"}', '{"id": "nobody-1"}', '{"id": "nobody-2"}'],
     "unknown record ids, not in the training manifest: nobody-1 (line 2), nobody-2 (line 3)"),
    ([], "no records requested"),
    (['{"id": "p0003-pet"', ], "req.jsonl:1: invalid JSON"),
])
def test_bad_requests_exit_2_and_write_nothing(tmp_path: Path, capsys, lines, message, bench) -> None:
    req = write_lines(tmp_path / "req.jsonl", lines)
    assert main(_forget(tmp_path, "m", "--requests", str(req))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "unlearn-ledger.jsonl").exists()


def test_other_bad_inputs(tmp_path: Path, capsys, bench) -> None:
    cfg = write_lines(tmp_path / "c.yaml", ["betaa: 1"])
    cases = [
        (["--config", str(cfg)], "c.yaml: unknown key 'betaa'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--model", str(bench.target)], "--requests, --manifest, --data, --holdout required"),
        (["--out", str(bench.target)], "already exists"),
    ]
    for extra, message in cases:
        argv = _forget(tmp_path, "m", *extra)
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err, (extra, err)


def _spawn(tmp_path: Path, out: str, log: Path) -> subprocess.Popen:
    cfg = write_lines(tmp_path / "long.yaml", ["max_steps: 100000", "eval_every: 0", "lr: 1.0e-5"])
    argv = ["forget", "--preset", "tiny", "--out", str(tmp_path / out), "--config", str(cfg)]
    # A shell that started pytest in the background leaves SIGINT ignored in its children; restore it.
    return subprocess.Popen([sys.executable, "-m", "unlearn.cli.main", *argv],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupt_leaves_nothing_and_rerun_completes(tmp_path: Path, bench, sig) -> None:
    log = tmp_path / "log.txt"
    proc = _spawn(tmp_path, "m", log)
    deadline = time.time() + 120
    while "forgetting" not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, log.read_text()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code != 0
    if sig == signal.SIGINT:
        assert code == 130 and "nothing was written" in log.read_text()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("long.yaml", "log.txt")]
    assert leftovers == [], leftovers  # no output directory, no temp directory, no ledger entry
    assert main(_forget(tmp_path, "m", "--max-steps", "2")) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert verify(tmp_path / "unlearn-ledger.jsonl").entries == 1


def test_stopping_rule_never_sees_the_verdict_split(tmp_path: Path, bench, monkeypatch) -> None:
    import unlearn.auditors.stopping as stopping
    from unlearn.workflows.common import BenchmarkOptions
    from unlearn.workflows.forget import ForgetJob, forget

    seen: set[str] = set()
    real = stopping.make_monitor

    def spy(tok, forget_set, holdout, retain_eval, args, retain_model=None, **kw):  # every record the rule scores
        seen.update(r.id for r in [*forget_set, *holdout, *retain_eval])
        return real(tok, forget_set, holdout, retain_eval, args, retain_model, **kw)

    monkeypatch.setattr(stopping, "make_monitor", spy)
    result = forget(ForgetJob(out=tmp_path / "m", overrides={"max_steps": 10, "eval_every": 2},
                              benchmark=BenchmarkOptions("tiny")))
    roles = result.receipt.roles
    cal, ver = set(roles["holdout_calibration"]), set(roles["holdout_verdict"])
    assert seen and not seen & ver and not seen & set(roles["retain_verdict"])
    assert seen <= set(roles["forget"]) | cal | set(roles["retain_calibration"])
    people = {r.id: r.meta["person"] for r in bench.split("holdout")}
    assert {people[i] for i in cal}.isdisjoint({people[i] for i in ver})  # split by person
    assert result.receipt.verdict in ("REMOVED", "NOT REMOVED", "OVER-UNLEARNED", "INCONCLUSIVE")
    battery = result.receipt.battery
    attacks = [a["attack"] for a in battery["attacks"]]
    assert battery["verdict"]["relative"] and attacks == ["as is", "8-bit RTN", "4-bit RTN"][:len(attacks)]
    # the attacks stop only at a NOT REMOVED (10 steps leave the person known), and say what they skipped
    assert [a["verdict"]["status"] for a in battery["attacks"]][:-1].count("NOT REMOVED") == 0
    assert (len(attacks) == 3) == (not battery["notes"])


def test_a_receipt_decided_on_a_first_look_says_so(tmp_path: Path) -> None:
    """A 10% request two steps in is still known: the battery's first look (20 records per set) finds it NOT
    REMOVED, scores nothing more, and the receipt's notes, verdict and 'after' check say on how many records
    (the judged half of the forget set: 50 of its 100 records; the stopping rule watched the other 50)."""
    from unlearn.auditors.battery import BatteryArgs
    from unlearn.workflows.common import BenchmarkOptions, DataSources
    from unlearn.workflows.forget import ForgetJob, forget

    result = forget(ForgetJob(out=tmp_path / "m", data=DataSources(forget_split="forget10"),
                              overrides={"max_steps": 2}, benchmark=BenchmarkOptions("tiny"),
                              battery=BatteryArgs(first_look=20)))
    battery = result.receipt.battery
    roles = result.receipt.roles
    assert len(roles["forget_judged"]) == len(roles["forget_monitored"]) == 50
    assert set(roles["forget_judged"]).isdisjoint(roles["forget_monitored"])
    assert [a["attack"] for a in battery["attacks"]] == ["as is"] and result.receipt.verdict == "NOT REMOVED"
    assert battery["verdict"]["members"] == 20 and "first look at 20 of 50 forget" in battery["notes"][0]
    assert "not run: 8-bit RTN, 4-bit RTN" in battery["notes"][1]
    assert result.receipt.after.forget_auc > 0.9


def test_a_request_that_needs_no_change_writes_no_copy(tmp_path: Path, bench, capsys) -> None:
    # the retain model never saw the built-in person: nothing to do
    assert main(_forget(tmp_path, "m", "--model", "builtin:retain", "--json")) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["steps"] == 0 and receipt["stop_reason"] == "already_undetectable" and receipt["unchanged"]
    assert not list((tmp_path / "m").glob("*.safetensors"))  # no duplicate of the weights
    assert receipt["model_in_sha256"] == model_hash(bench.retain)
    assert verify(tmp_path / "unlearn-ledger.jsonl").ok  # the entry points at the unchanged input weights
