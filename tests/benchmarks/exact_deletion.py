"""Deletion-ready (sharded) training against central training on the built-in benchmark.

    python tests/benchmarks/exact_deletion.py [--preset tiny] [--shards 2,4,8] [--slices 4] [--at-risk]
        [--schedule 6,1,1,1] [--json out.json]

Per S: training wall time and records processed (steps x batch) relative to the central target; exact match
on retained facts and on the utility set relative to the central target; the LOSS AUC of the trained
forget10 people against the holdout before any deletion (does sharding still learn them?); the cost of
deleting one person (the first of forget01) and forget10, relative to retraining the central model;
whether the forget10 deletion is bitwise the sharded retain model (the same recipe without forget10); and
serving cost (scoring throughput) relative to the central model; and the cost of deleting each trained person
alone (from the assignment, no training: median, mean and max over the people), relative to central
retraining. ``--at-risk`` adds, per S, the same with forget10's records flagged ``deletion_risk`` (SISA's
distribution-aware placement: the last slice of their shards). ``--schedule 6,1,1,1``: relative epochs per
stage, front-loaded (the same records processed in all; a deletion retrains the stages from a person's slice
on, so it costs less, and the late slices' people train less). One run, one machine: ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from unlearn import sharded
from unlearn.attacks.runner import score_records
from unlearn.auditors.metrics import auc
from unlearn.benchmark.build import build, exact_match
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.model import load_model
from unlearn.splits import GROUP_FIELDS


def central_cost(bench) -> int:
    t = bench.report["config"]["recipe"]["train"]
    n = bench.report["models"]["target"]["train_records"]
    return int(round(t["epochs"] * math.ceil(n / t["batch_size"]))) * t["batch_size"]


def throughput(model, tok, records) -> float:
    start = time.perf_counter()
    table = score_records(model, tok, records, ["loss"])
    tokens = sum(len(r.response) for r in records)  # characters as a proxy common to both models
    return tokens / (time.perf_counter() - start) if table is not None else 0.0


def same_weights(a: Path, b: Path, shards: int) -> bool:
    from safetensors.torch import load_file

    for s in range(shards):
        x, y = (load_file(str(sharded.member_dir(p, s) / "model.safetensors")) for p in (a, b))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def person_costs(assignment: dict, plan, records: list) -> list[int]:
    """Records processed by deleting each trained person alone (`sharded.retrain_cost`), from the assignment;
    records without a person (the utility set) are not requests here."""
    people: dict[str, list[str]] = {}
    for r in records:
        if any(k in r.meta for k in GROUP_FIELDS):
            people.setdefault(sharded.unit_of(r), []).append(r.id)
    costs = []
    for ids in people.values():
        gone = set(ids)
        kept = {k: v for k, v in assignment.items() if k not in gone}
        costs.append(sharded.retrain_cost(kept, plan, sharded.plan_deletion(assignment, ids)))
    return costs


def row_for(bench, shards: int, slices: int, central: dict, records: list, tok, at_risk: bool = False,
            schedule: tuple[float, ...] = ()) -> dict:
    forget10, holdout = bench.split(bench.retain_split), bench.split("holdout")
    start = time.perf_counter()
    path = bench.sharded("target", shards, slices, at_risk=at_risk, schedule=schedule)
    built = time.perf_counter() - start  # 0 when cached: the build's own time is in sharded.json's cost
    model, _ = load_model(path)
    plan = sharded.ShardPlan.from_dict(sharded.read_meta(path)["plan"])
    assignment = sharded.read_assignment(path)
    cost = sharded.full_cost(assignment, plan)
    s = score_records(model, tok, [*forget10, *holdout], ["loss"]).scores["loss"]
    out = {"shards": shards, "slices": slices, "placement": "forget10 at risk" if at_risk else "hash",
           "stage_epochs": ",".join(f"{plan.epochs(r):.1f}" for r in range(slices)),
           "train_cost_vs_central": cost / central["cost"],
           "train_seconds": round(built, 1) if built > 1 else None,
           "em_retained_vs_central": exact_match(model, tok, central["retained"]) / central["em_retained"],
           "em_utility_vs_central": exact_match(model, tok, central["utility"]) / max(central["em_utility"], 1e-9),
           "forget10_loss_auc": auc(s[: len(forget10)], s[len(forget10):]),
           "serving_throughput_vs_central": throughput(model, tok, holdout) / central["throughput"]}
    first = bench.split("forget01")  # 1% of the people: one person on tiny, two on default; take the first
    person = [r for r in first if r.meta.get("person") == first[0].meta.get("person")]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        one = sharded.delete(path, records, [r.id for r in person], tok, Path(tmp) / "one")
        t = time.perf_counter()
        ten = sharded.delete(path, records, [r.id for r in forget10], tok, Path(tmp) / "ten")
        out["forget10_seconds"] = round(time.perf_counter() - t, 1)
        gold = bench.sharded("retain", shards, slices, schedule=schedule)
        out["forget10_bitwise_equals_sharded_retain"] = same_weights(Path(tmp) / "ten", gold, shards)
        shutil.rmtree(tmp, ignore_errors=True)
    out["one_person_cost_vs_central"] = one.cost / central["cost"]
    out["forget10_cost_vs_central"] = ten.cost / central["cost"]
    each = sorted(c / central["cost"] for c in person_costs(assignment, plan, records))
    out["any_person_cost_vs_central"] = {"median": each[len(each) // 2], "mean": sum(each) / len(each),
                                         "max": each[-1], "people": len(each)}
    return out


def cell(value) -> str:
    if isinstance(value, dict):  # a distribution over people
        return f"{value['median']:.3f} / {value['mean']:.3f} / {value['max']:.3f} (median / mean / max)"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--shards", default="2,4,8")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--json", default=None)
    parser.add_argument("--at-risk", action="store_true",
                        help="also a row per S with forget10's records flagged deletion_risk (last slice)")
    parser.add_argument("--schedule", default="", help="relative epochs per stage, comma-separated (one per slice)")
    args = parser.parse_args()
    schedule = tuple(float(x) for x in args.schedule.split(",")) if args.schedule else ()
    from rich.console import Console
    from rich.table import Table

    bench = build(args.preset)
    target, tok = load_model(bench.target)
    retained = bench.split(RETAIN_OF[bench.retain_split])[:300]
    utility = bench.split("utility")
    central = {"cost": central_cost(bench), "retained": retained, "utility": utility,
               "em_retained": exact_match(target, tok, retained), "em_utility": exact_match(target, tok, utility),
               "throughput": throughput(target, tok, bench.split("holdout"))}
    forget10, holdout = bench.split(bench.retain_split), bench.split("holdout")
    s = score_records(target, tok, [*forget10, *holdout], ["loss"]).scores["loss"]
    central_auc = auc(s[: len(forget10)], s[len(forget10):])
    records = bench.split("train")
    rows = [row_for(bench, int(n), args.slices, central, records, tok, risk, schedule) for n in args.shards.split(",")
            for risk in ((False, True) if args.at_risk else (False,))]
    table = Table(title=f"deletion-ready training vs central ({args.preset}; central: EM retained "
                        f"{central['em_retained']:.3f}, utility {central['em_utility']:.3f}, forget10 LOSS AUC "
                        f"{central_auc:.3f})")
    cols = ["shards", "placement", "stage_epochs", "train_cost_vs_central", "em_retained_vs_central",
            "em_utility_vs_central", "forget10_loss_auc", "one_person_cost_vs_central", "any_person_cost_vs_central",
            "forget10_cost_vs_central",
            "forget10_bitwise_equals_sharded_retain", "serving_throughput_vs_central"]
    for c in cols:
        table.add_column(c.replace("_", " "))
    for r in rows:
        table.add_row(*(cell(r[c]) for c in cols))
    Console(width=200).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "central_auc": central_auc,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
