"""Handle a deletion request: validate it, unlearn, audit before/after, write the new model with its receipt
atomically and append the ledger entry."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.config import DEFAULT_METHOD, LoadOptions
from unlearn.errors import ConfigError, Interrupted
from unlearn.jsonio import JsonObject
from unlearn.receipt import AdapterInfo, Evidence, ExactInfo, LedgerRef, LossCheck, Receipt, RequestInfo
from unlearn.splits import Splits
from unlearn.workflows.common import (
    SILENT,
    BenchmarkOptions,
    DataSources,
    PathLike,
    RecordSets,
    Reporter,
    benchmark_if_needed,
    model_path,
    new_out_dir,
    record_sets,
    stats_line,
)

if TYPE_CHECKING:
    import torch

    from unlearn.auditors.battery import BatteryArgs, KnownScores
    from unlearn.data import Record
    from unlearn.unlearner import UnlearnResult

RECEIPT = "unlearn_receipt.json"


@dataclass(frozen=True)
class ForgetJob:
    """A deletion request against a model. ``model`` is a local directory or ``builtin:target`` (None);
    ``config`` a method yaml or a shipped preset name; ``overrides`` win over both."""

    model: PathLike | None = None
    data: DataSources = DataSources()
    method: str = DEFAULT_METHOD
    config: PathLike | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    out: PathLike | None = None  # a NEW directory; default runs/forget-METHOD-TIME
    ledger: PathLike | None = None  # default: unlearn-ledger.jsonl beside ``out``
    retain_model: PathLike | None = None  # trained without the forget set: makes the verdict relative
    battery: BatteryArgs | None = None  # the receipt's attack battery (None: the defaults)
    copy_unchanged: bool = False  # write the weights even when the request needed no change
    adapter: PathLike | None = None  # a LoRA adapter on ``model`` (scope lora unlearns its own parameters)
    merge: bool = False  # with a LoRA adapter: write the merged model instead of the adapter
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model


@dataclass
class ForgetResult:
    out: Path
    ledger: Path
    entry_hash: str  # "" on a process that did not commit
    receipt: Receipt


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


def run_method(model: torch.nn.Module, tok: Any, forget: Sequence[Record], retain: Sequence[Record], splits: Splits,
               margs: Any, method: str, report: Reporter = SILENT,
               gold: torch.nn.Module | None = None, kept: dict[int, Any] | None = None) -> UnlearnResult:
    """``method`` on ``forget`` under the stopping rule (on the monitored forget records among them and the
    calibration halves; relative to ``gold``, a model trained without the forget set, when given), with
    progress, wall time and peak memory; ``kept``: see `make_monitor`."""
    from unlearn.auditors.stopping import make_monitor
    from unlearn.methods import get_method, measured

    ids = {r.id for r in forget}
    watched = [r for r in splits.forget_monitored if r.id in ids] or list(forget)
    monitor = (make_monitor(tok, watched, splits.holdout_calibration, splits.retain_calibration, margs, gold,
                            kept=kept) if margs.eval_every else None)
    task = f"unlearning ({method})"

    def on_step(step: int, total: int, stats: JsonObject) -> None:
        report.progress(task, step, total, stats_line(stats))

    report.progress(task, 0, margs.max_steps)
    return measured(get_method(method).run, model, tok, forget, retain, margs, monitor=monitor, on_step=on_step)


def judge(result: UnlearnResult, tok: Any, forget: Sequence[Record], splits: Splits, before: LossCheck,
          battery_args: BatteryArgs | None, gold: torch.nn.Module | None, report: Reporter = SILENT,
          known: KnownScores | None = None) -> Evidence:
    """The receipt's evidence for an unlearning run, on the verdict halves: the LOSS check before/after, the
    attack battery (relative to ``gold`` when given; ``known``: the forget set's scores on the returned weights,
    from the stopping rule) and privleak against it."""
    from unlearn.attacks.runner import score_records
    from unlearn.auditors.battery import BatteryArgs, removal_battery
    from unlearn.auditors.metrics import auc, privleak
    from unlearn.auditors.stopping import check_from_scores

    report.progress("attack battery", 0, None)
    start = time.perf_counter()
    battery = removal_battery(result.model, tok, forget, splits.holdout_verdict, battery_args or BatteryArgs(),
                              retain_model=gold, known=known)
    # the LOSS check after, from the battery's own scores of the model as is (one more pass: retain utility)
    f, h = battery.scores["as is"]
    retain_lp = (score_records(result.model, tok, splits.retain_verdict, ["loss"]).scores["loss"]
                 if splits.retain_verdict else None)
    after = check_from_scores(f["loss"], h["loss"], retain_lp)
    leak = None
    if battery.reference:
        rf, rh = battery.reference["as is"]
        leak = privleak(after.forget_auc, auc(rf["loss"], rh["loss"]))
    return Evidence(
        steps=result.steps, stop_reason=result.stop_reason, stop_message=result.stop_message,
        verdict=battery.verdict.status, verdict_message=battery.verdict.message, battery=battery.to_dict(),
        wall_seconds=round(result.wall_seconds, 3), battery_seconds=round(time.perf_counter() - start, 3),
        peak_memory_mb=None if result.peak_memory_mb is None else round(result.peak_memory_mb, 1),
        peak_memory_kind=result.memory_kind, before=before, after=after, history=result.history,
        method_stats=result.stats, privleak_vs_retain=leak,
        retain_utility_relative=(after.retain_prob or 0) / max(before.retain_prob or 1e-12, 1e-12))


def commit(ledger_path: Path, key: bytes, content: JsonObject, out: Path, receipt: Receipt,
           model: torch.nn.Module | None, tok: Any, unchanged_hash: str | None = None,
           expect_head: str | None = None, files: Callable[[Path], str] | None = None) -> Receipt:
    """Write the model (or, when ``model`` is None, a receipt naming the unchanged weights ``unchanged_hash``;
    or, with ``files``, whatever it writes into the directory, returning its weights hash) and its ledger entry
    in one commit, Ctrl-C held until both are written; the receipt with its ledger entry."""
    from unlearn import ledger
    from unlearn.model import write_model_files

    written = receipt.with_ledger(LedgerRef(str(ledger_path.absolute())))
    text = json.dumps(written.to_dict(), indent=2)

    def write(directory: Path) -> dict[str, str | None]:
        if files is not None:
            digest = files(directory)
            (directory / RECEIPT).write_text(text, encoding="utf-8")
            return {"weights_sha256": digest}
        if model is None:
            (directory / RECEIPT).write_text(text, encoding="utf-8")
            return {"weights_sha256": unchanged_hash}
        return write_model_files(model, tok, directory, {RECEIPT: text})

    with deferred_interrupts() as caught:
        done = ledger.commit_model(ledger_path, key, content, out, write, expect_head=expect_head)
    entry_hash = str(done.entry["entry_hash"])
    if caught:
        raise Interrupted(f"interrupted after the commit: the model {out} and its ledger entry "
                          f"{entry_hash[:16]}... in {ledger_path} were both written")
    return written.with_ledger(LedgerRef(str(ledger_path.absolute()), entry_hash))


def forget(job: ForgetJob, report: Reporter = SILENT) -> ForgetResult:
    """Apply ``job``: the input model is never modified; the output directory and the ledger entry are
    written only when the whole run succeeded."""
    from unlearn import ledger, lora
    from unlearn.auditors.stopping import forget_check, returned_scores
    from unlearn.data import format_of, special_prefix
    from unlearn.distributed import is_main_process
    from unlearn.model import load_model, model_hash

    margs = resolve_method_args(job)
    bench = benchmark_if_needed([job.model], job.benchmark, report)
    path = model_path(job.model, bench)
    sets = record_sets(job.data, bench)
    out = new_out_dir(job.out, f"forget-{job.method}")
    ledger_path = Path(job.ledger) if job.ledger else out.parent / "unlearn-ledger.jsonl"
    ledger.check_paths(out, ledger_path, path)  # every place the commit writes, before any work
    key = ledger.load_key(create=True)
    assert key is not None
    from unlearn import ensemble

    if ensemble.is_sharded(path):  # deletion-ready training: exact deletion, no approximate method
        return forget_exact(job, sets, Path(path), out, ledger_path, key, report)
    model, tok = load_model(path, job.load, adapter=job.adapter)
    adapter_in = Path(job.adapter) if job.adapter else path if lora.is_adapter_dir(path) else None
    before_hash = model_hash(adapter_in or path)
    if margs.scope == "lora" and not lora.is_peft(model):
        model = lora.attach(model, margs.lora_rank, margs.lora_alpha, margs.lora_targets, base_path=path)
    elif lora.is_peft(model) and margs.scope != "lora":
        raise ConfigError(f"the input carries a LoRA adapter: unlearn its parameters with scope lora (scope "
                          f"'{margs.scope}' would change the frozen base), or merge it into a model first")
    base_sha256 = model_hash(lora.base_of(adapter_in) if adapter_in and not job.adapter else path) if (
        lora.is_peft(model)) else None
    splits = Splits.of(sets.holdout, sets.retain_eval, margs.seed, sets.forget)
    report.note(f"forgetting {sets.label}: {len(sets.forget)} records ({len(splits.forget_monitored)} monitored + "
                f"{len(splits.forget_judged)} judged), retain {len(sets.retain)}, holdout "
                f"{len(splits.holdout_calibration)} calibration + {len(splits.holdout_verdict)} verdict; "
                f"method {job.method}")
    gold_path = (Path(job.retain_model) if job.retain_model else
                 bench.retain if bench is not None and {r.id for r in sets.forget} <= {
                     r.id for r in bench.split(bench.retain_split)} else None)
    gold = load_model(gold_path, job.load)[0] if gold_path is not None else None
    before = forget_check(model, tok, splits.forget_judged, splits.holdout_verdict, splits.retain_verdict)
    kept: dict[int, KnownScores] = {}
    result = run_method(model, tok, sets.forget, sets.retain, splits, margs, job.method, report, gold, kept)
    evidence = judge(result, tok, splits.forget_judged, splits, before, job.battery, gold, report,
                     returned_scores(result, kept))
    unchanged = result.steps == 0 and not job.copy_unchanged
    adapter = AdapterInfo(str(adapter_in) if adapter_in else None, base_sha256,
                          "merged model" if job.merge else "adapter") if base_sha256 else None
    receipt = Receipt.of(
        evidence, request=request_info(job, sets), sets=sets.sizes(), roles=splits.roles(sets.forget),
        model_in=str(path), model_in_sha256=before_hash, out=str(out), unchanged=unchanged, method=job.method,
        config=margs.to_dict(), template=format_of(tok).describe(), special_prefix=special_prefix(tok),
        adapter=adapter, retain_model=str(gold_path) if gold_path else None)
    if not is_main_process():  # every process unlearned its shard; the first one commits the result
        return ForgetResult(out, ledger_path, "", receipt)
    extra: JsonObject = {"verdict": evidence.verdict}
    if base_sha256:
        extra.update(base_sha256=base_sha256, output_kind="merged" if job.merge else "adapter")
    if unchanged:
        extra.update(unchanged=True, model_in=ledger.relative_output(Path(path), ledger_path.absolute()))
    content = ledger.make_entry(key, records=sets.forget, method=job.method, config=margs.to_dict(),
                                model_before=before_hash, request_file=job.data.requests,
                                stop_reason=result.stop_reason, extra=extra)
    written = None if unchanged else lora.merged(result.model) if job.merge else result.model
    receipt = commit(ledger_path, key, content, out, receipt, written, tok, before_hash)
    return ForgetResult(out, ledger_path, receipt.entry_hash, receipt)


def request_info(job: ForgetJob, sets: RecordSets) -> RequestInfo:
    return RequestInfo(sets.label, [r.id for r in sets.forget], str(job.data.requests) if job.data.requests else None,
                       sets.request.duplicates_folded if sets.request else 0)


@dataclass
class ExactVersion:
    """A sharded model's new version, retrained into a staging directory beside the output: the ensemble to
    judge, what was retrained, and the commit's writer (it links the staged files into the committed
    directory; `discard` removes the staging directory afterwards, committed or not)."""

    result: UnlearnResult
    staged: Path
    retrained: dict[str, int]
    cost: int
    relative_cost: float

    def files(self, directory: Path) -> str:
        from unlearn import sharded

        for child in self.staged.iterdir():
            sharded.link_or_copy(child, directory / child.name)
        return sharded.sharded_hash(directory)

    def discard(self) -> None:
        shutil.rmtree(self.staged.parent, ignore_errors=True)

    def info(self) -> ExactInfo:
        return ExactInfo(self.retrained, self.cost, round(self.relative_cost, 4))


def exact_version(path: Path, records: Sequence[Record], ids: Sequence[str], tok: Any, out: Path,
                  load: LoadOptions, report: Reporter = SILENT) -> ExactVersion:
    """Each shard of the sharded model ``path`` holding one of ``ids`` retrained from the checkpoint before its
    first such slice on its remaining ``records`` (`unlearn.sharded.delete`): the recipe run without them."""
    from unlearn import sharded
    from unlearn.distributed import on_main
    from unlearn.fsutil import temp_sibling
    from unlearn.model import load_model
    from unlearn.unlearner import UnlearnResult

    slices = sharded.ShardPlan.from_dict(sharded.read_meta(path)["plan"]).slices
    # under a launcher every process retrains its shards into the main process's staging directory
    staged = on_main(lambda: temp_sibling(out)) / "model"
    try:
        start = time.perf_counter()
        run = sharded.delete(path, records, ids, tok, staged,
                             on_stage=lambda s, r, n: report.progress(f"retraining shard {s}", r + 1, slices))
        seconds = time.perf_counter() - start
        message = (f"retrained shard(s) {', '.join(f'{s} from slice {r}' for s, r in sorted(run.retrained.items()))}"
                   f" on their remaining records: {run.relative_cost:.3f} x training the sharded model anew")
        retrained = {str(k): v for k, v in run.retrained.items()}
        result = UnlearnResult(load_model(staged, load)[0], 0, "exact_retraining", message, wall_seconds=seconds,
                               stats={"retrained": retrained})
    except BaseException:
        shutil.rmtree(staged.parent, ignore_errors=True)
        raise
    return ExactVersion(result, staged, retrained, run.cost, run.relative_cost)


def forget_exact(job: ForgetJob, sets: RecordSets, path: Path, out: Path, ledger_path: Path, key: bytes,
                 report: Reporter = SILENT) -> ForgetResult:
    """The request against a sharded model (`exact_version`): no approximate method, no stopping rule, so the
    whole forget set is judged."""
    from unlearn import ledger, sharded
    from unlearn.auditors.stopping import forget_check
    from unlearn.distributed import is_main_process, join_launch, rank_world
    from unlearn.model import load_model, model_hash

    join_launch()  # under a launcher: the shards are retrained one per process
    before_hash = model_hash(path)
    plan = sharded.ShardPlan.from_dict(sharded.read_meta(path)["plan"])
    model, tok = load_model(path, job.load)
    splits = Splits.of(sets.holdout, sets.retain_eval, plan.seed, sets.forget, watched=False)
    world = rank_world()[1]
    report.note(f"exact deletion of {len(sets.forget)} record(s) from the sharded model {path} "
                f"({plan.shards} shards x {plan.slices} slices)" + (f", over {world} processes" if world > 1 else ""))
    before = forget_check(model, tok, sets.forget, splits.holdout_verdict, splits.retain_verdict)
    version = exact_version(path, [*sets.forget, *sets.retain], [r.id for r in sets.forget], tok, out, job.load,
                            report)
    try:
        gold = load_model(job.retain_model, job.load)[0] if job.retain_model else None
        evidence = judge(version.result, tok, sets.forget, splits, before, job.battery, gold, report)
        receipt = Receipt.of(
            evidence, request=request_info(job, sets), sets=sets.sizes(), roles=splits.roles(sets.forget),
            model_in=str(path), model_in_sha256=before_hash, out=str(out), unchanged=False, method="exact",
            config=plan.to_dict(), exact=version.info(),
            retain_model=str(job.retain_model) if job.retain_model else None)
        if not is_main_process():  # the first process commits (and then removes the staging directory)
            return ForgetResult(out, ledger_path, "", receipt)
        content = ledger.make_entry(key, records=sets.forget, method="exact", config=plan.to_dict(),
                                    model_before=before_hash, request_file=job.data.requests,
                                    stop_reason="exact_retraining",
                                    extra={"verdict": evidence.verdict, "exact": True})
        receipt = commit(ledger_path, key, content, out, receipt, None, tok, files=version.files)
    finally:
        if is_main_process():
            version.discard()
    return ForgetResult(out, ledger_path, receipt.entry_hash, receipt)
