"""Deletion-ready fine-tuning with LoRA members: S adapters on one base, against one central adapter.

    python tests/benchmarks/lora_shards.py [--preset tiny] [--shards 4] [--slices 4] [--rank 8] [--json out.json]

The scenario a user with a pretrained model has: a base that never saw the deletable records (here the
benchmark's retain model, which never saw forget10) is fine-tuned on them (forget10, by person). Central: one
adapter on all of them (R = 1); sharded: S adapters x R slices, per-stage epochs E x 2 / (R + 1). Per way of
serving (central adapter; the sharded adapters as an ensemble of probabilities, as merged deltas summed, as
merged deltas averaged): exact match on the fine-tuned records and on the utility set relative to the base,
the fine-tuned people's LOSS AUC against the holdout (did it learn them?), and scoring throughput relative to
the base. Then the cost of deleting one person (records processed, and wall time) relative to fine-tuning the
central adapter again. One run, one machine: ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from unlearn import ensemble, sharded
from unlearn.attacks.runner import score_records
from unlearn.auditors.metrics import auc
from unlearn.benchmark.build import build, exact_match
from unlearn.model import load_model
from unlearn.training import TrainArgs


def throughput(model, tok, records) -> float:
    start = time.perf_counter()
    score_records(model, tok, records, ["loss"])
    return len(records) / (time.perf_counter() - start)


def measure(model, tok, tuned, utility, holdout) -> dict:
    s = score_records(model, tok, [*tuned, *holdout], ["loss"]).scores["loss"]
    return {"em_tuned": exact_match(model, tok, tuned), "em_utility": exact_match(model, tok, utility),
            "loss_auc": auc(s[: len(tuned)], s[len(tuned):]), "records_per_s": throughput(model, tok, holdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    bench = build(args.preset)
    base, tok = load_model(bench.retain)
    tuned, holdout, utility = bench.split(bench.retain_split), bench.split("holdout"), bench.split("utility")
    train = TrainArgs(epochs=args.epochs, batch_size=16, lr=args.lr, bf16=False)
    rows = {"base": measure(base, tok, tuned, utility, holdout)}
    with tempfile.TemporaryDirectory() as tmp:
        central = sharded.ShardPlan(1, 1, 0, "merged_sum", train, args.rank)
        t = time.perf_counter()
        sharded.train_sharded(tuned, tok, central, base, Path(tmp) / "central")
        central_seconds = time.perf_counter() - t
        rows["central adapter"] = measure(load_model(Path(tmp) / "central")[0], tok, tuned, utility, holdout)
        plan = sharded.ShardPlan(args.shards, args.slices, 0, "mean_prob",
                                 dataclasses.replace(train, epochs=args.epochs * 2 / (args.slices + 1)), args.rank)
        t = time.perf_counter()
        sharded.train_sharded(tuned, tok, plan, base, Path(tmp) / "sharded")
        sharded_seconds = time.perf_counter() - t
        names = ensemble.adapter_names(args.shards)
        rows["sharded, ensemble (mean_prob)"] = measure(load_model(Path(tmp) / "sharded")[0], tok, tuned, utility,
                                                        holdout)
        for mean in (False, True):
            merged = ensemble.merge_adapters(ensemble.load_adapters(Path(tmp) / "sharded", args.shards), names, mean)
            rows[f"sharded, merged_{'mean' if mean else 'sum'}"] = measure(merged, tok, tuned, utility, holdout)
        person = [r for r in tuned if r.meta["person"] == tuned[0].meta["person"]]
        t = time.perf_counter()
        one = sharded.delete(Path(tmp) / "sharded", tuned, [r.id for r in person], tok, Path(tmp) / "one")
        one_seconds = time.perf_counter() - t
        central_cost = sharded.full_cost(sharded.read_assignment(Path(tmp) / "central"), central)
    for r in rows.values():
        r["em_utility_vs_base"] = r["em_utility"] / max(rows["base"]["em_utility"], 1e-9)
        r["throughput_vs_base"] = r["records_per_s"] / rows["base"]["records_per_s"]
    cost = {"train_seconds_central": round(central_seconds, 1), "train_seconds_sharded": round(sharded_seconds, 1),
            "one_person_cost_vs_central": one.cost / central_cost, "one_person_seconds_vs_central":
            one_seconds / central_seconds, "one_person_retrained": one.retrained}
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LoRA members ({args.preset}: rank {args.rank}, {args.shards} x {args.slices}; base = the "
                        f"retain model, fine-tuned on {len(tuned)} records of forget10)")
    cols = ["em_tuned", "em_utility_vs_base", "loss_auc", "throughput_vs_base"]
    for c in ["model", *cols]:
        table.add_column(c.replace("_", " "))
    for name, r in rows.items():
        table.add_row(name, *(f"{r[c]:.3f}" for c in cols))
    Console(width=160).print(table)
    print(json.dumps(cost))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "rows": rows, "cost": cost}, indent=2))


if __name__ == "__main__":
    main()
