"""Deletion-ready training: a sharded model whose deletions are exact (`unlearn.sharded`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from unlearn.config import LoadOptions
from unlearn.errors import UnlearnError
from unlearn.sharded import ShardPlan, ShardRun
from unlearn.workflows.common import SILENT, BenchmarkOptions, PathLike, Reporter, new_out_dir


@dataclass(frozen=True)
class TrainJob:
    """Train S shards x R slices. ``data``: training files (any format `load_records` reads; checked against
    ``manifest`` when given); none: the built-in benchmark's training split, from its recipe's initialisation.
    ``base_model``: every shard starts from these weights (fine-tuning; required with ``data``)."""

    data: tuple[PathLike, ...] = ()
    manifest: PathLike | None = None
    base_model: PathLike | None = None
    plan: ShardPlan = field(default_factory=ShardPlan)
    out: PathLike | None = None  # a NEW directory; default runs/train-TIME
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()


@dataclass
class TrainResult:
    out: Path
    run: ShardRun
    seconds: float


def train(job: TrainJob, report: Reporter = SILENT) -> TrainResult:
    from unlearn import sharded
    from unlearn.data import check_against_manifest, load_manifest, load_records
    from unlearn.model import load_model

    out = _launched_out(job.out)
    if job.data:
        if job.base_model is None:
            raise UnlearnError("--base-model is required with --data: the model every shard starts from")
        manifest = load_manifest(job.manifest) if job.manifest else None
        records = []
        for path in job.data:
            part = load_records(path)
            if manifest is not None:
                check_against_manifest(part, manifest, path)
            records += part
        init, tok = load_model(job.base_model, job.load)
    else:
        from unlearn.benchmark.build import init_model

        bench = job.benchmark.build(report)
        cfg = bench.config()
        records = bench.split("train")
        tok = load_model(bench.target, job.load)[1]
        init = init_model(cfg.recipe, tok, cfg.generator.seed)
        if job.base_model is not None:
            init = load_model(job.base_model, job.load)[0]
    if not records:
        raise UnlearnError("no training records")
    plan = job.plan
    from unlearn.distributed import rank_world

    world = rank_world()[1]
    report.note(f"training {plan.shards} shards x {plan.slices} slices on {len(records)} records"
                + (f", over {world} processes (one shard at a time each)" if world > 1 else ""))
    flagged = len(sharded.flagged_units(records))
    if flagged:
        report.note(f"{flagged} people (or records) flagged deletion_risk: each in its shard's last slice")
    start = time.perf_counter()
    run = sharded.train_sharded(records, tok, plan, init, out, on_stage=lambda s, r, n: report.progress(
        "deletion-ready training", s * plan.slices + r + 1, plan.shards * plan.slices))
    return TrainResult(out, run, time.perf_counter() - start)


def _launched_out(out: PathLike | None) -> Path:
    """The new output directory, the main process's under a launcher (`accelerate launch`, torchrun: shards
    are then trained one per process, `unlearn.sharded.my_shards`)."""
    from unlearn.distributed import join_launch, on_main

    join_launch()
    return on_main(lambda: new_out_dir(out, "train"))
