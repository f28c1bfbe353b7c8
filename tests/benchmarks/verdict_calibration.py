"""Calibration of the removal verdict on the built-in benchmark.

Requests are people of the forget split (the retain model never saw them): single-person requests (each
person, under `--splits` (2) random calibration/verdict splits of the holdout) and the whole 10% split (under
several splits). For each: the verdict on the retain model (absolute: its false-alarm rate, since it never saw
the data), on a second never-trained model (the retain recipe with seed 1: absolute, and relative to the retain
model, the relative verdict's honest false-alarm rate) and on the target (absolute and relative to the retain
model: it must be NOT REMOVED). Then, for each
method, unlearning under the stopping rule (calibration split) and the battery (verdict split): the share of
REMOVED / NOT REMOVED / OVER-UNLEARNED / INCONCLUSIVE without attacks, with 4-bit quantization, and with
relearning (10% requests only: a single person has no second half to measure on), relative to the retain
model, with wall times relative to retraining. ``--sharded N``: exact deletions from the built-in sharded
target (N single people and the whole split, each the recipe run without them), judged by the battery
relative to the same request deleted from the seed-1 sharded recipe (a reference that lacks exactly the
request's people: the relative verdict's honest false-alarm rate for an exact deletion), and relative to the
sharded retain model (the recipe without the whole split: a single person's version still holds the split's
other people, some of whom share name tokens with the person, so that reference lacks more than the request).

    python tests/benchmarks/verdict_calibration.py [--preset tiny] [--methods graddiff,npo,...] [--sharded 20]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from unlearn.auditors.battery import BatteryArgs, forget_holdout_scores, reference_scores, removal_battery
from unlearn.auditors.stopping import make_monitor
from unlearn.auditors.verdict import two_sided_verdict
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.methods import get_method, load_method_args, measured
from unlearn.model import load_model
from unlearn.splits import split_by_group


def second_retain(bench, preset: str, tok) -> torch.nn.Module:
    """The retain model's recipe and data with seed 1 (cached beside the benchmark)."""
    from unlearn.benchmark.build import PRESETS, init_model
    from unlearn.model import save_model
    from unlearn.training import train_lm

    path = bench.root.parent.parent / "calibration" / bench.root.name / "retain-seed1"
    if not path.exists():
        recipe = PRESETS[preset].recipe
        forget_ids = {r.id for r in bench.split(bench.retain_split)}
        model = init_model(recipe, tok, seed=1)
        t = time.perf_counter()
        train_lm(model, [r for r in bench.split("train") if r.id not in forget_ids], tok,
                 dataclasses.replace(recipe.train, seed=1))
        print(f"trained the seed-1 retain model in {time.perf_counter() - t:.0f} s", flush=True)
        save_model(model, tok, path)
    return load_model(path)[0]


def second_sharded(bench, preset: str, tok) -> Path:
    """The built-in sharded target's recipe with seed 1 (assignment, initialisation, data order), cached beside
    the benchmark: a second deletion-ready model for references that lack exactly a request's people."""
    from unlearn import sharded
    from unlearn.benchmark.build import init_model, sharded_plan

    path = bench.root.parent.parent / "calibration" / bench.root.name / "sharded-4x4-seed1"
    if not (path / sharded.SHARDED_FILE).is_file():
        cfg = bench.config()
        plan = sharded_plan(cfg, 4, 4)
        plan = dataclasses.replace(plan, seed=1, train=dataclasses.replace(plan.train, seed=1))
        t = time.perf_counter()
        sharded.train_sharded(bench.split("train"), tok, plan, init_model(cfg.recipe, tok, seed=1), path)
        print(f"trained the seed-1 sharded model in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def sharded_rows(bench, preset: str, tok, requests, holdout, table, split: str) -> None:
    """Exact deletion of each request from the sharded target (one shard retrained), judged by the battery
    relative to (a) the seed-1 sharded recipe with the same request deleted (a reference that lacks exactly
    the request's people, as the verdict's definition asks) and (b) the sharded retain model (the recipe
    without the whole split: for a single person it lacks 19 more people); the cost relative to training the
    sharded model anew."""
    import tempfile

    from unlearn import sharded

    target_path, twin_path = bench.sharded("target"), second_sharded(bench, preset, tok)
    gold = load_model(bench.sharded("retain"))[0]
    train = bench.split("train")
    costs = []
    for name, forget, seed in requests:
        kind = "10%" if name.startswith(split) else "single"
        _, ver = split_by_group(holdout, seed=seed)
        bargs = BatteryArgs(relearn=False, seed=seed, exhaustive=True)
        ids = [r.id for r in forget]
        with tempfile.TemporaryDirectory() as tmp:
            run = sharded.delete(target_path, train, ids, tok, Path(tmp) / "v")
            sharded.delete(twin_path, train, ids, tok, Path(tmp) / "ref")
            model, ref = load_model(Path(tmp) / "v")[0], load_model(Path(tmp) / "ref")[0]
            found = {}
            for label, reference in (("vs seed-1 recipe without the same people", ref),
                                     ("vs sharded retain (lacks the whole split)", gold)):
                battery = removal_battery(model, tok, forget, ver, bargs, retain_model=reference)
                for r in battery.rows:
                    table[f"exact (sharded) {label}: {r.attack} ({kind})"][r.verdict.status] += 1
                table[f"exact (sharded) {label}: worst case ({kind})"][battery.verdict.status] += 1
                found[label.split(" (")[0]] = {"verdict": battery.verdict.status,
                                               "aucs": {e.score: round(e.auc, 3) for e in battery.verdict.evidence},
                                               "people": [f.person for f in battery.verdict.people]}
        costs.append(run.relative_cost)
        print(json.dumps({"request": name, "retrained": run.retrained,
                          "cost_vs_sharded_training": round(run.relative_cost, 3), **found}), flush=True)
    print(f"exact deletion cost / training the sharded model: median {sorted(costs)[len(costs) // 2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--methods", default="grad_ascent,graddiff,npo,simnpo,newton,iau,soul")
    ap.add_argument("--method-requests", type=int, default=4, help="single-person requests per method")
    ap.add_argument("--splits", type=int, default=2, help="calibration/verdict splits of the holdout per person "
                                                        "(single-person rows: people x splits verdicts)")
    ap.add_argument("--sharded", type=int, default=0, help="exact deletions of this many single people (and of "
                                                           "the whole split) from the built-in sharded target")
    args = ap.parse_args()
    bench = build(args.preset)
    split = bench.retain_split
    forget_all, holdout, retain = bench.split(split), bench.split("holdout"), bench.split(RETAIN_OF[split])
    retain_eval = random.Random(0).sample(retain, 200)
    people = sorted({r.meta["person"] for r in forget_all})
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    twin = second_retain(bench, args.preset, tok)
    requests = [(f"{p}/s{s}", [r for r in forget_all if r.meta["person"] == p], s)
                for s in range(args.splits) for p in people]
    requests += [(f"{split}/s{s}", forget_all, s) for s in range(5)]
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    margins: dict[str, list[float]] = collections.defaultdict(list)

    def row(key: str, *a, **k) -> None:
        v = two_sided_verdict(*a, **k)
        table[key][v.status] += 1
        margins[key].append(v.margin)
    for name, forget, seed in requests:
        kind = "single" if "/" in name and not name.startswith(split) else "10%"
        _, ver = split_by_group(holdout, seed=seed)
        groups = [r.meta["person"] for r in ver]
        fg = [r.meta["person"] for r in forget]
        tm, th = forget_holdout_scores(target, tok, forget, ver)
        rm, rh = forget_holdout_scores(gold, tok, forget, ver)
        kw = {"nonmember_groups": groups, "member_groups": fg, "seed": seed}
        row(f"retain, absolute ({kind})", rm, rh, **kw)
        row(f"target, absolute ({kind})", tm, th, **kw)
        row(f"retain, vs itself ({kind})", rm, rh, retain_members=rm, retain_nonmembers=rh, **kw)
        row(f"target, vs retain ({kind})", tm, th, retain_members=rm, retain_nonmembers=rh, **kw)
        # the honest false-alarm rate of the relative verdict: another model that never saw the data (same
        # recipe, another seed) judged against the retain model
        wm, wh = forget_holdout_scores(twin, tok, forget, ver)
        row(f"retain seed 1, absolute ({kind})", wm, wh, **kw)
        row(f"retain seed 1, vs retain ({kind})", wm, wh, retain_members=rm, retain_nonmembers=rh, **kw)
    t = time.perf_counter()
    retrain_seconds = json.loads((bench.root / "report.json").read_text())["models"]["retain"]["train_seconds"]
    method_requests = [r for r in requests if r[0].endswith("/s0") and not r[0].startswith(split)]
    method_requests = method_requests[: args.method_requests] + [r for r in requests if r[0].startswith(split)][:1]
    costs: dict[str, list[float]] = collections.defaultdict(list)
    references: dict[str, dict] = {}
    for method in [m for m in args.methods.split(",") if m]:
        for name, forget, seed in method_requests:
            kind = "10%" if name.startswith(split) else "single"
            cal, ver = split_by_group(holdout, seed=seed)
            rcal, _ = split_by_group(retain_eval, seed=seed)
            margs = load_method_args(method)
            model, _ = load_model(bench.target)
            res = measured(get_method(method).run, model, tok, forget, retain, margs,
                           monitor=make_monitor(tok, forget, cal, rcal, margs, gold))
            bargs = BatteryArgs(relearn=kind == "10%", seed=seed, exhaustive=True)
            if name not in references:  # the retain model's side: once per request, for every method
                references[name] = reference_scores(gold, tok, forget, ver, bargs)
            start = time.perf_counter()
            battery = removal_battery(res.model, tok, forget, ver, bargs, reference=references[name])
            costs[method].append((time.perf_counter() - start) / max(res.wall_seconds, 1e-9))
            for row in battery.rows:
                table[f"{method}: {row.attack} ({kind})"][row.verdict.status] += 1
            table[f"{method}: worst case ({kind})"][battery.verdict.status] += 1
            costs[method + " wall/retrain"].append(res.wall_seconds / retrain_seconds)
    if args.sharded:
        sharded_rows(bench, args.preset, tok, [r for r in requests if r[0].endswith("/s0")][: args.sharded]
                     + [r for r in requests if r[0].startswith(split)][:1], holdout, table, split)
    print("margin: the verdict's default, 1.96 x the spread of the held-out people's statistics / sqrt(forget "
          "people), clipped to [0.05, 0.10] AUC (0.20 under 10 people); median per row")
    print(f"{'':44}{'REMOVED':>9}{'NOT REM.':>9}{'OVER':>7}{'INCONCL.':>9}{'n':>4}{'margin':>8}")
    for key, c in table.items():
        n = sum(c.values())
        margin = f"{sorted(margins[key])[len(margins[key]) // 2]:>8.3f}" if margins[key] else ""
        print(f"{key:44}" + "".join(f"{c[s] / n:>{w}.2f}" for s, w in (("REMOVED", 9), ("NOT REMOVED", 9),
                                                                         ("OVER-UNLEARNED", 7), ("INCONCLUSIVE", 9)))
              + f"{n:>4}{margin}")
    for key, v in costs.items():
        print(f"{key}: median {sorted(v)[len(v) // 2]:.2f} ({'battery / unlearning' if 'wall' not in key else ''})")
    print(f"methods part: {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
