"""Deletion requests over time: queue requests in a store, answer every pending one in one unlearning run
that writes the next model version, and never ship a version under which an earlier request is detectable
again (the regression guard)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.config import DEFAULT_METHOD, LoadOptions
from unlearn.errors import InputError, UnlearnError
from unlearn.jsonio import JsonObject, show
from unlearn.receipt import Receipt, RequestInfo, VersionInfo
from unlearn.workflows.common import (
    BUILTIN,
    SILENT,
    BenchmarkOptions,
    DataSources,
    PathLike,
    Reporter,
    is_builtin,
    model_path,
    record_sets,
)

if TYPE_CHECKING:
    import torch

    from unlearn.auditors.battery import BatteryArgs
    from unlearn.auditors.verdict import Verdict
    from unlearn.data import Record
    from unlearn.receipt import Evidence
    from unlearn.store import Request, Store, Version
    from unlearn.unlearner import UnlearnResult
    from unlearn.workflows.forget import ExactVersion

STRATEGIES = ("incremental", "original")


class RegressionError(UnlearnError):
    """The run made an earlier answered request detectable again; nothing was written."""


@dataclass(frozen=True)
class AddJob:
    """Queue the deletion request ``requests`` (JSONL of ids or texts). A store that does not exist yet is
    created for ``model`` (default: the built-in target) and its training data ``data``."""

    store: PathLike
    requests: PathLike
    name: str | None = None
    model: PathLike | None = None
    data: DataSources = DataSources()
    retain_model: PathLike | None = None  # trained without every request to come: verdicts relative to it
    benchmark: BenchmarkOptions = BenchmarkOptions()


@dataclass
class AddResult:
    request: Request | None  # None: every id was already answered or pending
    already_answered: list[str]
    already_pending: list[str]
    created: bool


@dataclass(frozen=True)
class RunJob:
    """Answer the pending requests (at most ``batch_max``) in one run and commit the next model version.
    ``incremental`` unlearns them from the latest version; ``original`` unlearns every request so far from
    the original weights."""

    store: PathLike
    method: str = DEFAULT_METHOD
    config: PathLike | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "incremental"
    batch_max: int | None = None
    max_repairs: int = 2  # unlearning rounds on earlier requests that became detectable again
    battery: BatteryArgs | None = None
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {self.strategy!r} (choose {' or '.join(STRATEGIES)})",
                             field="strategy")
        if self.batch_max is not None and self.batch_max < 1:
            raise InputError("batch_max must be >= 1", field="batch_max")


@dataclass
class RunResult:
    version: int | None  # None: nothing was pending
    out: Path | None
    entry_hash: str
    answered: list[str]
    receipt: Receipt | None  # None: nothing was pending
    message: str


def _store(path: PathLike) -> Store:
    from unlearn.store import Store

    return Store(path)


def _sources(config: Mapping[str, Any], options: BenchmarkOptions) -> tuple[DataSources, Any, Path]:
    """The store's data sources, the built-in benchmark when it serves it, and the original model's path (a
    built-in store names its model as ``builtin:target`` or ``builtin:sharded``; stores made before that was
    recorded serve the target)."""
    if config["builtin"]:
        spec = config.get("spec") or "builtin:target"
        if spec not in BUILTIN:
            raise InputError(f"a built-in store serves one of {', '.join(BUILTIN)}, not {show(spec)}", field="spec")
        bench = dataclasses.replace(options, preset=config["preset"]).build()
        return DataSources(retain_eval=config["retain_eval"]), bench, model_path(spec, bench)
    src = DataSources(manifest=config["manifest"], data=tuple(config["data"]), holdout=config["holdout"],
                      retain_eval=config["retain_eval"], fields=config.get("fields") or None)
    return src, None, Path(config["model"])


def add_requests(job: AddJob, report: Reporter = SILENT) -> AddResult:
    from unlearn.model import model_hash

    store = _store(job.store)
    created = not store.exists()
    if created:
        builtin = is_builtin(job.model)
        bench = job.benchmark.build(report) if builtin else None
        path = model_path(job.model, bench).absolute()
        config = {"builtin": builtin, "spec": str(job.model or "builtin:target") if builtin else None,
                  "preset": job.benchmark.preset, "model": str(path),
                  "model_sha256": model_hash(path), "manifest": _absolute(job.data.manifest),
                  "data": [_absolute(p) for p in job.data.data], "holdout": _absolute(job.data.holdout),
                  "retain_model": _absolute(job.retain_model), "retain_eval": job.data.retain_eval,
                  "fields": dict(job.data.fields or {})}
    elif job.model is not None or job.data != DataSources():
        raise UnlearnError(f"{store.root} already serves {store.config()['model']}; give only the request file")
    config = store.config() if not created else config
    src, bench, _ = _sources(config, job.benchmark)
    # validated at once: against the manifest, every id in the training data, every file readable
    ids = [r.id for r in record_sets(dataclasses.replace(src, requests=job.requests), bench).forget]
    if created:
        created = store.create(config)  # False: another add created the same store meanwhile; this one joins it
    queued, answered, pending = store.add(job.name, ids)
    return AddResult(queued, answered, pending, created)


def _absolute(path: PathLike | None) -> str | None:
    return str(Path(path).absolute()) if path else None


def _merge(first: UnlearnResult, then: UnlearnResult) -> UnlearnResult:
    return dataclasses.replace(then, steps=first.steps + then.steps, history=first.history + then.history,
                               wall_seconds=first.wall_seconds + then.wall_seconds,
                               peak_memory_mb=max(filter(None, (first.peak_memory_mb, then.peak_memory_mb)),
                                                  default=None))


@dataclass
class _Batch:
    """One run of the queue: the pending requests it answers, the earlier ones it guards, and where it starts."""

    todo: list[Request]
    earlier: list[Request]
    parent: Version | None
    number: int
    out: Path
    start: Path  # the weights it unlearns from
    start_hash: str
    original_hash: str
    incremental: bool
    head: str  # the ledger head the commit expects
    src: DataSources  # the store's data
    bench: Any  # the built-in benchmark when it serves the store

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.todo]

    @property
    def new_ids(self) -> list[str]:
        return [i for r in self.todo for i in r.records]

    @property
    def earlier_ids(self) -> list[str]:
        return [i for r in self.earlier for i in r.records]


def run_requests(job: RunJob, report: Reporter = SILENT) -> RunResult:
    """Killed at any point, a rerun finishes the batch exactly once: the ledger entry and the model version
    are one commit, and the queue follows the ledger."""
    from unlearn import ledger
    from unlearn.auditors.stopping import forget_check
    from unlearn.ensemble import is_sharded
    from unlearn.methods import load_method_args
    from unlearn.model import load_model
    from unlearn.splits import Splits
    from unlearn.workflows.forget import exact_version, judge, run_method

    store = _store(job.store)
    config = store.config()
    margs = load_method_args(job.method, job.config, job.overrides)
    with store.run_lock():
        b = _batch(store, job, config)
        if b is None:
            return RunResult(None, None, "", [], None, "no pending requests")
        key = ledger.load_key(create=True)
        assert key is not None
        bench = b.bench
        sets = record_sets(b.src, bench, forget_ids=b.earlier_ids + b.new_ids)  # retain: none of them
        by_id = {r.id: r for r in sets.forget}
        batch = [by_id[i] for i in b.new_ids]
        forget = batch if b.incremental else [by_id[i] for i in b.earlier_ids + b.new_ids]
        gold_path = _gold_path(config, bench, set(by_id))
        gold = load_model(gold_path, job.load)[0] if gold_path is not None else None
        model, tok = load_model(b.start, job.load)
        exact = is_sharded(b.start)  # a deletion-ready model: each version is the recipe without the records
        splits = Splits.of(sets.holdout, sets.retain_eval, margs.seed, forget, watched=not exact)
        report.note(f"version {b.number}: answering {len(b.todo)} request(s) ({len(batch)} records) "
                    f"{'from version ' + str(b.parent.number) if b.incremental and b.parent else 'from the original'}"
                    f"; {len(b.earlier)} earlier request(s) guarded")
        judged = splits.judged_of(batch)
        before = forget_check(model, tok, judged, splits.holdout_verdict, splits.retain_verdict)
        version = exact_version(b.start, [*sets.forget, *sets.retain], [r.id for r in forget], tok, b.out, job.load,
                                report) if exact else None
        result = version.result if version else run_method(model, tok, forget, sets.retain, splits, margs,
                                                            job.method, report, gold)
        guard = Guard(job, b, by_id, splits, tok, gold, exact)
        result = guard.run(result, lambda model, repair: run_method(model, tok, repair, sets.retain, splits, margs,
                                                                    job.method, report, gold), report)
        evidence = judge(result, tok, judged, splits, before, job.battery, gold, report)
        unlearned = list({r.id: r for r in forget + guard.repaired_records()}.values())
        receipt = _commit(job, store, b, key, margs.to_dict(), result, evidence, guard, unlearned, splits.roles(batch),
                          tok, exact, version, str(gold_path) if gold_path else None)
        store.reconcile()
    return RunResult(b.number, b.out, receipt.entry_hash, b.names, receipt,
                     f"version {b.number} answers {', '.join(b.names)} ({evidence.verdict})")


def _gold_path(config: JsonObject, bench: Any, ids: set[str]) -> Path | None:
    """The model trained without every record of the store's requests: the store's ``retain_model``, else the
    built-in benchmark's (of the same recipe: the sharded retain model for the sharded target) when every
    record is in its forget split."""
    if config["retain_model"]:
        return Path(str(config["retain_model"]))
    if bench is None or not ids <= {r.id for r in bench.split(bench.retain_split)}:
        return None
    return bench.sharded("retain") if str(config.get("spec")).startswith("builtin:sharded") else bench.retain


def _batch(store: Store, job: RunJob, config: JsonObject) -> _Batch | None:
    """The pending requests (at most ``batch_max``) and where this run starts, checked against the ledger:
    the original weights and the parent version's must be the committed ones. None: nothing is pending."""
    from unlearn import ledger
    from unlearn.model import model_hash
    from unlearn.store import ANSWERED

    versions = store.versions()
    requests = store.requests(versions)
    todo = [r for r in requests if r.status != ANSWERED][: job.batch_max]
    if not todo:
        return None
    parent = versions[-1] if versions else None
    src, bench, original = _sources(config, job.benchmark)
    original_hash = model_hash(original)
    if original_hash != config["model_sha256"]:
        raise UnlearnError(f"the original model {original} changed since the store was created")
    incremental = job.strategy == "incremental" and parent is not None
    start = parent.weights if incremental and parent is not None else original
    start_hash = model_hash(start)
    if incremental and parent is not None and start_hash != parent.entry["model_after"]:
        raise UnlearnError(f"version {parent.number} ({start}) no longer has its committed weights")
    number = parent.number + 1 if parent else 1
    out = store.version_dir(number)
    ledger.check_paths(out, store.ledger, start)
    return _Batch(todo, [r for r in requests if r.status == ANSWERED], parent, number, out, start, start_hash,
                  original_hash, incremental, ledger.head_of(store.ledger)[1], src, bench)


class Guard:
    """The regression guard: every request (each one, the union of the earlier ones, compared with the union's
    verdict at the parent version: more records give the guard power a single person lacks, and the new
    cumulative union) judged under the new weights; an earlier request that became NOT REMOVED is unlearned
    again, at most ``max_repairs`` times, and one that is still (or became OVER-UNLEARNED) refuses the version.
    The guard may look ``max_repairs`` + 1 times at the same verdict split: alpha is spent evenly over those
    looks (Bonferroni), so repairing until a request passes cannot buy a false NOT REMOVED or a false pass."""

    def __init__(self, job: RunJob, b: _Batch, by_id: dict[str, Record], splits: Any, tok: Any,
                 gold: torch.nn.Module | None, exact: bool) -> None:
        from unlearn.auditors.battery import BatteryArgs
        from unlearn.store import CUMULATIVE, EARLIER

        self.job, self.number, self.splits, self.tok, self.gold, self.exact = job, b.number, splits, tok, gold, exact
        self.groups = {r.name: [by_id[i] for i in r.records] for r in [*b.earlier, *b.todo]}
        self.groups[CUMULATIVE] = [by_id[i] for i in b.earlier_ids + b.new_ids]
        self.baseline: dict[str, str | None] = {r.name: r.verdict for r in b.earlier}
        if b.earlier and b.parent is not None:
            self.groups[EARLIER] = [by_id[i] for i in b.earlier_ids]
            self.baseline[EARLIER] = b.parent.entry.get("request_verdicts", {}).get(CUMULATIVE)
        battery = job.battery or BatteryArgs()
        self.battery = replace(battery, alpha=battery.alpha / (job.max_repairs + 1))
        self.repaired: list[str] = []
        self.verdicts: dict[str, Verdict] = {}

    def run(self, result: UnlearnResult, unlearn: Callable[[torch.nn.Module, list[Record]], UnlearnResult],
            report: Reporter) -> UnlearnResult:
        """``result`` after the guard's repairs (``unlearn``: the method on the records to repair)."""
        from unlearn.auditors.battery import request_verdicts
        from unlearn.auditors.verdict import NOT_REMOVED, OVER_UNLEARNED

        for round_ in range(self.job.max_repairs + 1):
            report.progress("regression guard", 0, None)
            self.verdicts = request_verdicts(result.model, self.tok, self.groups, self.splits.holdout_verdict,
                                             self.battery, retain_model=self.gold)
            regressed = [n for n, was in self.baseline.items()
                         if self.verdicts[n].status in (NOT_REMOVED, OVER_UNLEARNED) and self.verdicts[n].status != was]
            if not regressed or self.exact:  # an exact version has nothing to repair: the verdicts are recorded
                break
            said = "; ".join(f"{n}: {was or 'unjudged'} -> {self.verdicts[n].status}" for n in regressed
                             for was in [self.baseline[n]])
            if round_ == self.job.max_repairs or any(self.verdicts[n].status == OVER_UNLEARNED for n in regressed):
                raise RegressionError(f"version {self.number} would make earlier request(s) detectable again "
                                      f"({said}); nothing was written (try --strategy original or another method)")
            report.note(f"earlier request(s) detectable again ({said}): unlearning them again")
            repair = list({r.id: r for n in regressed for r in self.groups[n]}.values())
            result = _merge(result, unlearn(result.model, repair))
            self.repaired += [n for n in regressed if n not in self.repaired]
        return result

    def repaired_records(self) -> list[Record]:
        return [r for n in self.repaired for r in self.groups[n]]

    def statuses(self) -> dict[str, str]:
        """Every answered request's verdict under the new version (the union of the earlier ones left out)."""
        from unlearn.store import EARLIER

        return {n: v.status for n, v in self.verdicts.items() if n != EARLIER}


def _commit(job: RunJob, store: Store, b: _Batch, key: bytes, config: JsonObject, result: UnlearnResult,
            evidence: Evidence, guard: Guard, unlearned: list[Record], roles: dict[str, list[str]], tok: Any,
            exact: bool, version: ExactVersion | None, retain_model: str | None) -> Receipt:
    """The version's receipt and ledger entry, committed with its weights (or a receipt naming the parent's
    when nothing changed)."""
    from unlearn import ledger
    from unlearn.data import format_of, special_prefix
    from unlearn.workflows.forget import commit

    unchanged = result.steps == 0 and not exact
    method = "exact" if exact else job.method
    receipt = Receipt.of(
        evidence, request=RequestInfo(f"queued request(s) {', '.join(b.names)}", b.new_ids),
        version=VersionInfo(b.number, b.parent.number if b.parent else None, job.strategy, b.names,
                            [r.name for r in b.earlier] + b.names, guard.statuses(), guard.repaired),
        roles=roles, model_in=str(b.start), model_in_sha256=b.start_hash, out=str(b.out), unchanged=unchanged,
        method=method, config=config, exact=version.info() if version else None,
        template=format_of(tok).describe(), special_prefix=special_prefix(tok), retain_model=retain_model)
    extra: JsonObject = {
        "version": b.number, "parent": b.parent.entry["entry_hash"] if b.parent else None, "strategy": job.strategy,
        "original_sha256": b.original_hash, "requests": {r.name: r.records for r in b.todo},
        "cumulative_requests": sorted([r.name for r in b.earlier] + b.names),
        "cumulative_records": sorted(set(b.earlier_ids + b.new_ids)),
        "request_verdicts": guard.statuses(), "repaired": guard.repaired, "verdict": evidence.verdict}
    if unchanged:
        extra.update(unchanged=True, model_in=ledger.relative_output(b.start, store.ledger.absolute()))
    content = ledger.make_entry(key, records=unlearned, method=method, config=config, model_before=b.start_hash,
                                stop_reason=result.stop_reason, extra=extra)
    try:
        return commit(store.ledger, key, content, b.out, receipt, None if unchanged else result.model, tok,
                      b.start_hash, expect_head=b.head, files=version.files if version else None)
    finally:
        if version:
            version.discard()
