"""`unlearn train`: deletion-ready (sharded) training, whose deletions `unlearn forget` makes exact."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, benchmark_options, load_options, sub_parser


def add_parser(sub: Any) -> None:
    t = sub_parser(sub, "train", "deletion-ready training: S shards x R slices, so a deletion retrains one shard")
    t.add_argument("--data", nargs="+", help="training-data file(s) (default: the built-in benchmark's train split)")
    t.add_argument("--manifest", help="training-data manifest the records are checked against")
    t.add_argument("--base-model", help="every shard starts from these weights (fine-tuning; required with --data)")
    t.add_argument("--shards", type=int, default=4, help="members (a person's records go to one)")
    t.add_argument("--slices", type=int, default=4, help="checkpointed stages per shard (a deletion restarts from "
                                                         "the one before the person's slice)")
    t.add_argument("--epochs", type=float, default=None, help="epochs per stage (default: as many records processed "
                                                               "as the built-in central recipe)")
    t.add_argument("--stage-epochs", type=_numbers, default=None,
                   help="epochs of each stage, one per slice, comma-separated (e.g. 48,8,8,8): front-loaded, a "
                        "deletion (which retrains from the person's slice on) costs less, and the late slices' "
                        "records train less (instead of --epochs)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--aggregate", default="mean_prob",
                   help="mean_prob (mean of member probabilities), mean_logprob, or with --lora-rank merged_sum / "
                        "merged_mean (the base plus the sum / mean of the adapters' deltas: one model to serve)")
    t.add_argument("--lora-rank", type=int, default=0,
                   help="members are LoRA adapters of this rank on the shared --base-model (0: full-parameter)")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA scaling numerator (default 16)")
    t.add_argument("--lora-targets", default=None, help="module names each adapter wraps (comma-separated)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="NEW output directory (default runs/train-TIME)")
    t.add_argument("--accelerate-config", help="launch through `accelerate launch` with this config (a file, or a "
                                               "name in configs/accelerate): the shards train in parallel, one "
                                               "per process")
    t.set_defaults(run=run)


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers expected, got {text!r}") from None


def plan_of(args: argparse.Namespace) -> Any:
    import dataclasses

    from unlearn.benchmark.build import PRESETS, sharded_plan
    from unlearn.errors import ConfigError
    from unlearn.sharded import ShardPlan

    base = sharded_plan(PRESETS[args.preset or "default"], args.shards, args.slices)
    train = dataclasses.replace(base.train, **{k: v for k, v in (("epochs", args.epochs), ("batch_size",
                                args.batch_size), ("lr", args.lr)) if v is not None}, seed=args.seed)
    lora = {k: v for k, v in (("lora_alpha", args.lora_alpha), ("lora_targets", args.lora_targets)) if v is not None}
    if args.stage_epochs and args.epochs is not None:
        raise ConfigError("--epochs (every stage) and --stage-epochs (each stage) exclude each other")
    return ShardPlan(args.shards, args.slices, args.seed, args.aggregate, train, args.lora_rank, **lora,
                     stage_epochs=args.stage_epochs or ())


def run(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.workflows.train import TrainJob, train

    job = TrainJob(data=tuple(args.data or ()), manifest=args.manifest, base_model=args.base_model,
                   plan=plan_of(args), out=args.out, benchmark=benchmark_options(args), load=load_options(args))
    result = train(job, ui)
    ui.table(f"deletion-ready model -> {result.out}", ["field", "value"],
             [["shards x slices", f"{job.plan.shards} x {job.plan.slices}"],
              ["records processed (steps x batch)", result.run.cost], ["seconds", round(result.seconds, 1)]])
    ui.json({"out": str(result.out), "plan": job.plan.to_dict(), "cost": result.run.cost,
             "seconds": round(result.seconds, 3)})
    return 0
