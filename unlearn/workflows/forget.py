"""Handle a deletion request: validate it, unlearn, audit before/after, write the new model with its receipt
atomically and append the ledger entry."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.errors import Interrupted
from unlearn.workflows.common import (
    SILENT,
    BenchmarkOptions,
    DataSources,
    PathLike,
    Reporter,
    benchmark_if_needed,
    model_path,
    new_out_dir,
    record_sets,
    stats_line,
)

if TYPE_CHECKING:
    from unlearn.auditors.battery import BatteryArgs

RECEIPT = "unlearn_receipt.json"


@dataclass(frozen=True)
class ForgetJob:
    """A deletion request against a model. ``model`` is a local directory or ``builtin:target`` (None);
    ``config`` a method yaml or a shipped preset name; ``overrides`` win over both."""

    model: PathLike | None = None
    data: DataSources = DataSources()
    method: str = "npo"
    config: PathLike | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    out: PathLike | None = None  # a NEW directory; default runs/forget-METHOD-TIME
    ledger: PathLike | None = None  # default: unlearn-ledger.jsonl beside ``out``
    retain_model: PathLike | None = None  # trained without the forget set: makes the verdict relative
    battery: BatteryArgs | None = None  # the receipt's attack battery (None: the defaults)
    copy_unchanged: bool = False  # write the weights even when the request needed no change
    benchmark: BenchmarkOptions = BenchmarkOptions()


@dataclass
class ForgetResult:
    out: Path
    ledger: Path
    entry_hash: str
    receipt: dict[str, Any]


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold Ctrl-C (and SIGTERM) until the block ends, so a commit is all-or-nothing; the caller learns
    whether one came (the list of signals caught)."""
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, f: caught.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def resolve_method_args(job: ForgetJob) -> Any:
    """The method's arguments exactly as the run will use them (defaults <- config <- overrides)."""
    from unlearn.methods import load_method_args

    return load_method_args(job.method, job.config, job.overrides)


def forget(job: ForgetJob, report: Reporter = SILENT) -> ForgetResult:
    """Apply ``job``: the input model is never modified; the output directory and the ledger entry are
    written only when the whole run succeeded."""
    from unlearn import ledger
    from unlearn.auditors.battery import BatteryArgs, removal_battery, split_by_group
    from unlearn.auditors.metrics import privleak
    from unlearn.auditors.stopping import forget_check, make_monitor
    from unlearn.distributed import is_main_process
    from unlearn.methods import get_method, measured
    from unlearn.model import load_model, model_hash, write_model_files

    margs = resolve_method_args(job)
    method = get_method(job.method)
    bench = benchmark_if_needed([job.model], job.benchmark, report)
    path = model_path(job.model, bench)
    sets = record_sets(job.data, bench)
    out = new_out_dir(job.out, f"forget-{job.method}")
    ledger_path = Path(job.ledger) if job.ledger else out.parent / "unlearn-ledger.jsonl"
    ledger.check_paths(out, ledger_path, path)  # every place the commit writes, before any work
    key = ledger.load_key(create=True)
    assert key is not None
    before_hash = model_hash(path)
    model, tok = load_model(path)
    # the stopping rule sees the calibration halves; the receipt's verdict only the other halves
    holdout_cal, holdout_ver = split_by_group(sets.holdout, seed=margs.seed)
    retain_cal, retain_ver = split_by_group(sets.retain_eval, seed=margs.seed)
    report.note(f"forgetting {sets.label}: {len(sets.forget)} records, retain {len(sets.retain)}, holdout "
                f"{len(holdout_cal)} calibration + {len(holdout_ver)} verdict; method {job.method}")
    before = forget_check(model, tok, sets.forget, holdout_ver, retain_ver)
    monitor = make_monitor(tok, sets.forget, holdout_cal, retain_cal, margs) if margs.eval_every else None
    task = f"unlearning ({job.method})"

    def on_step(step: int, total: int, stats: dict[str, Any]) -> None:
        report.progress(task, step, total, stats_line(stats))

    report.progress(task, 0, margs.max_steps)
    result = measured(method.run, model, tok, sets.forget, sets.retain, margs, monitor=monitor, on_step=on_step)
    after = forget_check(result.model, tok, sets.forget, holdout_ver, retain_ver)
    gold_path = (Path(job.retain_model) if job.retain_model else
                 bench.retain if bench is not None and {r.id for r in sets.forget} <= {
                     r.id for r in bench.split(bench.retain_split)} else None)
    gold = load_model(gold_path)[0] if gold_path is not None else None
    report.progress("attack battery", 0, None)
    battery_start = time.perf_counter()
    battery = removal_battery(result.model, tok, sets.forget, holdout_ver, job.battery or BatteryArgs(),
                              retain_model=gold)
    battery_seconds = time.perf_counter() - battery_start
    unchanged = result.steps == 0 and not job.copy_unchanged
    receipt: dict[str, Any] = {
        "request": {"file": str(job.data.requests) if job.data.requests else None, "label": sets.label,
                    "ids": [r.id for r in sets.forget],
                    "duplicates_folded": sets.request.duplicates_folded if sets.request else 0},
        "sets": {"forget": len(sets.forget), "retain": len(sets.retain), "holdout": len(sets.holdout),
                 "retain_eval": len(sets.retain_eval)},
        "roles": {"forget": [r.id for r in sets.forget],
                  "holdout_calibration": [r.id for r in holdout_cal], "holdout_verdict": [r.id for r in holdout_ver],
                  "retain_calibration": [r.id for r in retain_cal], "retain_verdict": [r.id for r in retain_ver]},
        "model_in": str(path), "model_in_sha256": before_hash, "out": str(out),
        "unchanged": unchanged, "method": job.method, "config": margs.to_dict(), "steps": result.steps,
        "stop_reason": result.stop_reason, "stop_message": result.stop_message,
        "verdict": battery.verdict.status, "verdict_message": battery.verdict.message,
        "battery": battery.to_dict(), "retain_model": str(gold_path) if gold_path else None,
        "wall_seconds": round(result.wall_seconds, 3), "battery_seconds": round(battery_seconds, 3),
        "peak_memory_mb": None if result.peak_memory_mb is None else round(result.peak_memory_mb, 1),
        "peak_memory_kind": result.memory_kind,
        "before": before, "after": after, "history": result.history, "method_stats": result.stats,
        "retain_utility_relative": after.get("retain_prob", 0) / max(before.get("retain_prob", 1e-12), 1e-12),
    }
    if gold is not None:
        reference = forget_check(gold, tok, sets.forget, holdout_ver, retain_ver)
        receipt["privleak_vs_retain"] = privleak(after["forget_auc"], reference["forget_auc"])
    if not is_main_process():  # every process unlearned its shard; the first one commits the result
        return ForgetResult(out, ledger_path, "", receipt)
    extra = {"verdict": battery.verdict.status}
    if unchanged:
        extra.update(unchanged=True, model_in=ledger.relative_output(Path(path), ledger_path.absolute()))
    content = ledger.make_entry(key, records=sets.forget, method=job.method, config=margs.to_dict(),
                                model_before=before_hash, request_file=job.data.requests,
                                stop_reason=result.stop_reason, extra=extra)
    receipt["ledger"] = {"path": str(ledger_path.absolute())}

    def write(directory: Path) -> dict[str, Any]:
        if unchanged:  # the request needed no change: a receipt that names the unchanged input weights
            (directory / RECEIPT).write_text(json.dumps(receipt, indent=2), encoding="utf-8")
            return {"weights_sha256": before_hash}
        return write_model_files(result.model, tok, directory, {RECEIPT: json.dumps(receipt, indent=2)})

    with deferred_interrupts() as caught:
        commit = ledger.commit_model(ledger_path, key, content, out, write)
    receipt["ledger"]["entry_hash"] = commit.entry["entry_hash"]
    if caught:
        raise Interrupted(f"interrupted after the commit: the model {out} and its ledger entry "
                          f"{commit.entry['entry_hash'][:16]}... in {ledger_path} were both written")
    return ForgetResult(out, ledger_path, commit.entry["entry_hash"], receipt)
