"""Deletion requests over time: the queue, model versions, crash safety and the regression guard."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_lines
from unlearn import ledger
from unlearn.auditors.verdict import NOT_REMOVED, REMOVED, Verdict
from unlearn.cli.main import main
from unlearn.errors import InputError
from unlearn.store import ANSWERED, PENDING, Store
from unlearn.workflows.common import BenchmarkOptions
from unlearn.workflows.requests import AddJob, RegressionError, RunJob, add_requests, run_requests

pytestmark = pytest.mark.slow
TINY = BenchmarkOptions(preset="tiny")
FAST = {"max_steps": 5, "eval_every": 5}


def _people(bench: Any, n: int) -> list[list[str]]:
    forget = bench.split(bench.retain_split)
    people = sorted({r.meta["person"] for r in forget})[:n]
    return [[r.id for r in forget if r.meta["person"] == p] for p in people]


def _request_file(tmp_path: Path, name: str, ids: list[str]) -> Path:
    return write_lines(tmp_path / name, [json.dumps({"id": i}) for i in ids])


def _add(tmp_path: Path, store: Path, name: str, ids: list[str]) -> Any:
    return add_requests(AddJob(store, _request_file(tmp_path, name + ".jsonl", ids), benchmark=TINY))


def _run(store: Path, **kw: Any) -> Any:
    return run_requests(RunJob(store, overrides=FAST, benchmark=TINY, **kw))


def test_queue_versions_and_ledger_chain(tmp_path: Path, bench) -> None:
    store_dir = tmp_path / "store"
    p1, p2, p3 = _people(bench, 3)
    first = _add(tmp_path, store_dir, "a", p1)
    assert first.created and first.request.name == "req-0001" and first.request.records == p1
    again = _add(tmp_path, store_dir, "a2", p1 + p2[:3])  # p1 pending already: only the new ids are queued
    assert again.already_pending == p1 and again.request.records == p2[:3]
    _add(tmp_path, store_dir, "b", p2[3:])
    r1 = _run(store_dir, batch_max=2)
    assert r1.version == 1 and r1.answered == ["req-0001", "req-0002"]
    store = Store(store_dir)
    assert [r.status for r in store.requests()] == [ANSWERED, ANSWERED, PENDING]
    dup = _add(tmp_path, store_dir, "c", p1[:2] + p3)  # answered ids are reported, not re-run
    assert dup.already_answered == p1[:2] and dup.request.records == p3
    r2 = _run(store_dir)
    assert r2.version == 2 and r2.answered == ["req-0003", "req-0004"]
    assert _run(store_dir).version is None  # nothing pending: nothing written
    versions = store.versions()
    assert [v.number for v in versions] == [1, 2]
    e1, e2 = (v.entry for v in versions)
    assert e1["parent"] is None and e2["parent"] == e1["entry_hash"] and e2["model_before"] == e1["model_after"]
    assert sorted(e2["cumulative_records"]) == sorted(p1 + p2 + p3)
    assert set(e2["cumulative_requests"]) == {"req-0001", "req-0002", "req-0003", "req-0004"}
    assert set(e2["request_verdicts"]) >= {"req-0001", "req-0004", "*all"}
    report = ledger.verify(store.ledger, key=ledger.load_key())
    assert report.ok, report.problems
    # every answered record is kept out of the retain set of later runs; no text in the store
    texts = {r.id: r for r in bench.split("train")}
    written = "".join(p.read_text(errors="replace") for p in store_dir.rglob("*.json*") if p.is_file())
    assert not any(texts[i].answer in written for i in p1 + p2 + p3)


def test_original_strategy_restarts_from_the_original_weights(tmp_path: Path, bench) -> None:
    store_dir = tmp_path / "store"
    p1, p2 = _people(bench, 2)
    _add(tmp_path, store_dir, "a", p1)
    _run(store_dir)
    _add(tmp_path, store_dir, "b", p2)
    r2 = _run(store_dir, strategy="original")
    e2 = Store(store_dir).versions()[-1].entry
    assert e2["strategy"] == "original" and e2["model_before"] == e2["original_sha256"]
    assert {r["id"] for r in e2["records"]} == set(p1 + p2)  # the union was unlearned
    assert r2.receipt.request.ids == p2
    assert ledger.verify(Store(store_dir).ledger, key=ledger.load_key()).ok


def test_add_rejects_unknown_ids_naming_the_file(tmp_path: Path, bench) -> None:
    bad = _request_file(tmp_path, "bad.jsonl", ["no-such-record"])
    with pytest.raises(InputError, match="bad.jsonl"):
        add_requests(AddJob(tmp_path / "store", bad, benchmark=TINY))
    assert not (tmp_path / "store" / "store.json").exists()  # nothing half-created


def test_queue_follows_the_ledger_after_a_kill_before_the_queue_update(tmp_path: Path, bench) -> None:
    store_dir = tmp_path / "store"
    _add(tmp_path, store_dir, "a", _people(bench, 1)[0])
    _run(store_dir)
    with sqlite3.connect(store_dir / "queue.sqlite") as con:  # as if killed right after the commit
        con.execute("UPDATE requests SET status = 'pending', version = NULL")
    assert [r.status for r in Store(store_dir).requests()] == [ANSWERED]
    assert _run(store_dir).version is None


@pytest.mark.parametrize("stage", ["written", "renamed", "appended"])
def test_killed_at_a_commit_stage_a_rerun_answers_each_request_exactly_once(tmp_path: Path, bench,
                                                                             stage: str) -> None:
    store_dir = tmp_path / "store"
    _add(tmp_path, store_dir, "a", _people(bench, 1)[0])
    cmd = [sys.executable, "-m", "unlearn.cli.main", "--preset", "tiny", "requests", "run", "--store",
           str(store_dir), "--max-steps", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "UNLEARN_COMMIT_PAUSE": stage})
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if f"PAUSED {stage}" in line:
            break
    assert f"PAUSED {stage}" in seen, seen
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = Store(store_dir)
    # "written": killed between unlearning and the save, nothing committed, the rerun does the work;
    # later stages: the model is in place, the next command completes the commit and does not rerun
    expected = [PENDING] if stage == "written" else [ANSWERED]
    assert [r.status for r in store.requests()] == expected
    rerun = _run(store_dir)
    assert (rerun.version == 1) == (stage == "written")
    assert [r.status for r in store.requests()] == [ANSWERED]
    rows = ledger.read_rows(store.ledger)
    assert len(rows) == 1 and list(rows[0].entry["requests"]) == ["req-0001"]
    assert ledger.verify(store.ledger, key=ledger.load_key()).ok
    assert not [p for p in store_dir.iterdir() if ".tmp-" in p.name]


def _verdicts(status_of: dict[str, str]) -> Any:
    def fake(model: Any, tok: Any, requests: dict[str, Any], *a: Any, **k: Any) -> dict[str, Verdict]:
        return {n: Verdict(status_of.get(n, REMOVED), "", 0.05, 0.75, 0.7, len(requests[n]), 10, True)
                for n in requests}
    return fake


def test_regression_guard_repairs_or_refuses(tmp_path: Path, bench, monkeypatch) -> None:
    import unlearn.auditors.battery as battery

    store_dir = tmp_path / "store"
    p1, p2, p3 = _people(bench, 3)
    _add(tmp_path, store_dir, "a", p1)
    monkeypatch.setattr(battery, "request_verdicts", _verdicts({}))
    _run(store_dir)  # req-0001 answered with REMOVED
    _add(tmp_path, store_dir, "b", p2)
    calls: list[int] = []

    def once_detectable(*a: Any, **k: Any) -> dict[str, Verdict]:  # detectable again, then repaired
        calls.append(1)
        return _verdicts({"req-0001": NOT_REMOVED} if len(calls) == 1 else {})(*a, **k)

    monkeypatch.setattr(battery, "request_verdicts", once_detectable)
    r2 = _run(store_dir)
    assert r2.receipt.version.repaired == ["req-0001"] and len(calls) == 2
    e2 = Store(store_dir).versions()[-1].entry
    assert set(p1) <= {r["id"] for r in e2["records"]}  # the repair unlearned req-0001 again
    _add(tmp_path, store_dir, "c", p3)
    monkeypatch.setattr(battery, "request_verdicts", _verdicts({"req-0002": NOT_REMOVED}))
    with pytest.raises(RegressionError, match="req-0002: REMOVED -> NOT REMOVED"):
        _run(store_dir, max_repairs=1)
    store = Store(store_dir)
    assert len(store.versions()) == 2 and not store.version_dir(3).exists()  # never silently shipped
    assert [r.status for r in store.requests()][-1] == PENDING


def test_version_chain_checks_catch_inconsistent_entries(tmp_path: Path) -> None:
    from unlearn.data import text_record

    path, key = tmp_path / "ledger.jsonl", ledger.load_key(create=True)
    rec = [text_record("a", "x"), text_record("b", "y")]

    def version(n: int, parent: str | None, before: str, requests: dict, cumulative: list[str]) -> dict:
        content = ledger.make_entry(key, records=rec, method="npo", config={}, model_before=before, extra={
            "version": n, "parent": parent, "strategy": "incremental", "original_sha256": "0" * 64,
            "requests": requests, "cumulative_requests": sorted({*requests, *(["r1"] if n > 1 else [])}),
            "cumulative_records": cumulative})
        return ledger.append_entry(path, key, content, model_after=f"{n}" * 64, output=f"v{n}")

    e1 = version(1, None, "0" * 64, {"r1": ["a"]}, ["a"])
    version(2, e1["entry_hash"], "1" * 64, {"r2": ["b"]}, ["a", "b"])
    assert ledger.verify(path, check_models=False, key=key).ok
    version(3, e1["entry_hash"], "1" * 64, {"r1": ["a"]}, ["a"])  # a fork that answers r1 twice
    problems = [p.message for p in ledger.verify(path, check_models=False, key=key).problems]
    assert any("does not follow version 2" in p for p in problems)
    assert any("did not start from its parent's weights" in p for p in problems)
    assert any("answered twice" in p for p in problems)
    assert any("cumulative sets" in p for p in problems)


def test_cli_requests_list_and_ledger_show(tmp_path: Path, bench, capsys) -> None:
    store_dir = tmp_path / "store"
    req = _request_file(tmp_path, "r.jsonl", _people(bench, 1)[0])
    assert main(["--preset", "tiny", "requests", "add", str(req), "--store", str(store_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request"] == "req-0001"
    assert main(["requests", "run", "--store", str(store_dir), "--max-steps", "3", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["requests", "list", "--store", str(store_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["requests"]
    assert [(r["name"], r["status"], r["version"]) for r in listed] == [("req-0001", "answered", 1)]
    assert main(["ledger", "show", str(store_dir / "ledger.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"][0]["version"] == 1
    assert main(["requests", "run", "--store", str(store_dir), "--batch-max", "0"]) == 2
    assert "batch_max must be >= 1" in capsys.readouterr().err


def test_simultaneous_adds_of_the_same_ids_queue_each_id_once(tmp_path: Path) -> None:
    import threading

    config = {"builtin": True, "model": "m"}
    for trial in range(20):
        root = tmp_path / f"store{trial}"
        barrier, created, errors = threading.Barrier(6), [], []

        def add(k: int, root: Path = root, barrier: threading.Barrier = barrier, created: list = created,
                errors: list = errors) -> None:
            try:
                store = Store(root)
                barrier.wait()
                created.append(store.create(config))  # the losers of the race join the winner's store
                store.add(None, ["a", "b", f"own-{k}"])
            except Exception as exc:  # any failure fails the test below
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and sorted(created) == [False] * 5 + [True]
        queued = [i for r in Store(root).requests() for i in r.records]
        assert sorted(queued) == sorted(["a", "b", *(f"own-{k}" for k in range(6))]), (trial, queued)
    with pytest.raises(Exception, match="created here meanwhile"):
        Store(tmp_path / "store0").create({"builtin": False, "model": "other"})


def test_verify_rejects_a_record_answered_by_two_versions(tmp_path: Path) -> None:
    entries = []
    prev = None
    for number, (name, ids) in enumerate([("r1", ["x", "y"]), ("r2", ["y", "z"])], start=1):
        e = {"version": number, "parent": prev["entry_hash"] if prev else None, "strategy": "original",
             "original_sha256": "o", "model_before": "o", "model_after": f"m{number}", "requests": {name: ids},
             "cumulative_requests": [*(prev["cumulative_requests"] if prev else []), name],
             "cumulative_records": sorted({*(prev["cumulative_records"] if prev else []), *ids}),
             "records": [{"id": i} for i in ids], "entry_hash": f"h{number}"}
        entries.append(e)
        prev = e
    problems: list = []
    rows = [ledger.Row(line=i + 1, raw=b"", entry=e) for i, e in enumerate(entries)]
    ledger._check_versions(rows, problems.append)
    assert [p.message for p in problems] == ["version 2: 1 record(s) answered twice (by an earlier version or by "
                                             "two of its own requests)"]


def test_a_damaged_store_configuration_or_queue_is_one_input_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert store.create({"builtin": True, "model": "m", "data": []})
    config = store.root / "store.json"
    for body in ['{"builtin": true, "model": "m", "data": "abc"}', '{"model": 3}', "[1]", "{", '{"builtin": true}']:
        config.write_text(body)
        with pytest.raises(InputError, match="store"):
            store.config()
    (store.root / "queue.sqlite").write_bytes(b"this is not a database" * 100)
    for f in store.root.glob("queue.sqlite-*"):
        f.unlink()
    with pytest.raises(InputError, match="request queue is damaged"):
        store.add(None, ["a"])


def test_a_builtin_sharded_store_serves_the_sharded_model_and_judges_against_its_retain_twin(tmp_path: Path,
                                                                                             bench: Any) -> None:
    """`requests add --model builtin:sharded` queued against the sharded target but answered from the central
    one (the store recorded only 'builtin'): its first run failed on the original's hash. The store records the
    built-in it serves; the answer is exact and judged against the same recipe trained without forget10."""
    from unlearn import sharded

    person, other = _people(bench, 2)
    add_requests(AddJob(tmp_path / "store", _request_file(tmp_path, "p.jsonl", person), model="builtin:sharded",
                        benchmark=TINY))
    res = run_requests(RunJob(tmp_path / "store", benchmark=TINY))
    assert res.receipt is not None and res.receipt.method == "exact" and res.receipt.exact is not None
    assert res.receipt.model_in == str(bench.sharded("target")) and res.receipt.retain_model == str(
        bench.sharded("retain"))
    assert not set(person) & set(sharded.read_assignment(res.out))
    assert res.receipt.verdict not in (NOT_REMOVED, "OVER-UNLEARNED")
    config = json.loads((tmp_path / "store" / "store.json").read_text())
    config["spec"] = "/somewhere/else"
    (tmp_path / "store" / "store.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="field 'spec'"):  # an edited store serves nothing else
        add_requests(AddJob(tmp_path / "store", _request_file(tmp_path, "q.jsonl", other), benchmark=TINY))
