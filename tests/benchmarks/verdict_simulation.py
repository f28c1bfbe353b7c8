"""The toolkit's own verdict and stopping functions on synthetic scores whose truth is known.

    python tests/benchmarks/verdict_simulation.py [--runs 200] [--json out.json]

A synthetic "model" scores records of people: a person's difficulty is shared by every model, each model also
has its own take on each person (two never-trained models disagree about a person by about 0.2 AUC, as the
built-in benchmark's models do), records add noise, and four correlated scores (LOSS, zlib, Min-K%, and a
heavy-tailed Min-K%++) come from one draw. The unlearned model adds a membership effect to the forget people
it still remembers; the retain model never saw them. Effects are set by the true set-level separation
E[AUC_u - AUC_r] (computed once on a large sample). Printed: P(each verdict) per cell, and for the stopping
rule the true residual separation at the check it returns.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np

from unlearn.auditors.verdict import INCONCLUSIVE, NOT_REMOVED, OVER_UNLEARNED, REMOVED, two_sided_verdict

SCORES = ("loss", "zlib", "mink", "minkpp")
LOG_PROB = ("loss", "zlib", "mink")  # -exp(-x): an effect e on x multiplies the score by exp(-e)
ORDER = (REMOVED, INCONCLUSIVE, NOT_REMOVED, OVER_UNLEARNED)


@dataclass(frozen=True)
class World:
    forget_people: int = 20
    held_out_people: int = 20
    per_person: int = 10
    disagreement: float = 0.4  # sd of a model's own take on a person (in score units)


def _model_scores(rng: np.random.Generator, difficulty: np.ndarray, record: np.ndarray, per: int,
                  disagreement: float, effect: np.ndarray) -> dict[str, np.ndarray]:
    """One model's four scores for every record (people in order, ``per`` records each). LOSS, zlib and Min-K%
    are log-probabilities, -exp(-x) with x normal: the log of the NLL is normal, as on the built-in benchmark
    (kurtosis 0.5 between two never-trained models)."""
    own = np.repeat(difficulty + rng.normal(0, disagreement, len(difficulty)) + effect, per)
    base = own + record + rng.normal(0, 0.2, len(record))
    x = {"loss": base + rng.normal(0, 0.15, len(base)), "zlib": base + rng.normal(0, 0.3, len(base)),
         "mink": base + rng.normal(0, 0.3, len(base)), "minkpp": base + 0.4 * rng.standard_t(3, len(base))}
    return {s: -np.exp(-v) if s in LOG_PROB else v for s, v in x.items()}


def draw(rng: np.random.Generator, world: World, effects: np.ndarray) -> dict:
    """Scores of the unlearned and the retain model on forget and held-out people, and the person labels.
    ``effects``: [forget_people] membership effect (score units) the unlearned model still carries."""
    k, n, per = world.forget_people, world.held_out_people, world.per_person
    difficulty = rng.normal(0, 1, k + n)
    record = rng.normal(0, 0.5, (k + n) * per)
    zero = np.zeros(k + n)
    u = _model_scores(rng, difficulty, record, per, world.disagreement, np.concatenate([effects, zero[k:]]))
    r = _model_scores(rng, difficulty, record, per, world.disagreement, zero)
    cut = k * per
    labels = [f"p{i // per:04d}" for i in range((k + n) * per)]
    return {"members": {s: v[:cut] for s, v in u.items()}, "nonmembers": {s: v[cut:] for s, v in u.items()},
            "retain_members": {s: v[:cut] for s, v in r.items()},
            "retain_nonmembers": {s: v[cut:] for s, v in r.items()},
            "member_groups": labels[:cut], "nonmember_groups": labels[cut:]}


@cache
def effect_for(separation: float, world: World = World()) -> float:
    """The uniform membership effect whose true E[AUC_u - AUC_r] (LOSS, forget vs held-out) is ``separation``
    (bisection on a large sample with one seed)."""
    from unlearn.auditors.metrics import auc

    big = World(400, 400, world.per_person, world.disagreement)

    def excess(effect: float) -> float:
        d = draw(np.random.default_rng(12345), big, np.full(big.forget_people, effect))
        return (auc(d["members"]["loss"], d["nonmembers"]["loss"])
                - auc(d["retain_members"]["loss"], d["retain_nonmembers"]["loss"]))

    lo, hi = -6.0, 6.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < separation else (lo, mid)
    return (lo + hi) / 2


def verdict_rates(world: World, effects: np.ndarray, runs: int, seed: int, grouped: bool = True,
                  relative: bool = True) -> tuple[Counter, float, float, float]:
    """(count of each verdict, median margin, median bound of the residual separation, median forget people
    the equivalence test would need for 80% power where it was INCONCLUSIVE)."""
    rng = np.random.default_rng(seed)
    out: Counter = Counter()
    margins, bounds, needed = [], [], []
    for i in range(runs):
        d = draw(rng, world, effects)
        if not grouped:
            d["member_groups"] = d["nonmember_groups"] = None
        if not relative:
            d["retain_members"] = d["retain_nonmembers"] = None
        v = two_sided_verdict(**d, n_boot=200, seed=i)
        out[v.status] += 1
        margins.append(v.margin)
        bounds.append(v.bound)
        if v.needed is not None:
            needed.append(v.needed)
    return out, float(np.median(margins)), float(np.median(bounds)), float(np.median(needed)) if needed else np.nan


def cells(world: World) -> dict[str, tuple[World, np.ndarray, dict]]:
    k = world.forget_people
    memorised = effect_for(0.49)  # a person the unlearned model still finds above everyone (own AUC ~1.00)

    def one_of(m: int) -> np.ndarray:
        e = np.zeros(k)
        e[:m] = memorised
        return e

    out = {"null (a second never-trained model)": (world, np.zeros(k), {})}
    for sep in (0.05, 0.10, 0.15, 0.25):
        out[f"true dAUC +{sep:.2f} (AUC {0.5 + sep:.2f})"] = (world, np.full(k, effect_for(sep)), {})
    out["over-unlearned, dAUC -0.15 (AUC 0.35)"] = (world, np.full(k, effect_for(-0.15)), {})
    out[f"1 memorised person of {k}"] = (world, one_of(1), {})
    out[f"2 memorised people of {k}"] = (world, one_of(2), {})
    single = World(1, world.held_out_people, world.per_person, world.disagreement)
    out["single person, null"] = (single, np.zeros(1), {})
    out["single person, memorised"] = (single, np.full(1, memorised), {})
    # the stopping rule's check: the same verdict on the monitored half (5 records a person) vs the calibration
    # people, at stop_alpha; under the exact null its per-check false alarms are these cells' NOT REMOVED + OVER
    half = max(1, world.per_person // 2)
    out["stopping check, 20 people, null"] = (World(20, world.held_out_people, half, world.disagreement),
                                              np.zeros(20), {})
    out["stopping check, 1 person, null"] = (World(1, world.held_out_people, half, world.disagreement),
                                             np.zeros(1), {})
    records = World(10, 200, 1, world.disagreement)
    out["record level 10 vs 200, null"] = (records, np.zeros(10), {"grouped": False})
    out["record level 10 vs 200, dAUC +0.25"] = (records, np.full(10, effect_for(0.25)), {"grouped": False})
    return out


def stopping_residuals(world: World, runs: int, seed: int, path: np.ndarray) -> dict[str, list[float]]:
    """The stopping rule's decision on each check of a run whose true separation follows ``path`` (one value
    per check): stop on REMOVED (equivalence), back off to the closest check (max |AUC - AUC_retain|) on
    OVER-UNLEARNED or at the end; the old rule also stopped on INCONCLUSIVE (mere non-rejection). Returns the
    true separation at the returned check, per rule."""
    rng = np.random.default_rng(seed)
    effects = np.array([effect_for(float(s)) for s in path])
    out: dict[str, list[float]] = {"equivalence (now)": [], "non-rejection (before)": []}
    for i in range(runs):
        d = draw(rng, world, np.zeros(world.forget_people))
        base = d["members"]
        verdicts = []
        for e in effects:
            d["members"] = {k: v * np.exp(-e) if k in LOG_PROB else v + e for k, v in base.items()}
            v = two_sided_verdict(**d, n_boot=100, seed=i)
            distance = max(abs(x.auc - (x.retain_auc or 0.5)) for x in v.evidence)
            verdicts.append((v.status, distance))
        for rule, stops in (("equivalence (now)", {REMOVED}), ("non-rejection (before)", {REMOVED, INCONCLUSIVE})):
            best = 0
            returned = len(path) - 1
            for t, (status, distance) in enumerate(verdicts):
                best = t if distance < verdicts[best][1] else best
                if status in stops:
                    returned = t
                    break
                if status == OVER_UNLEARNED or t == len(path) - 1:
                    returned = best
                    break
            out[rule].append(float(path[returned]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=20, help="held-out people (the receipt's verdict half)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, help="only the cells whose name contains this (e.g. 'stopping "
                                                       "check, 1 person'), and no stopping-rule path table")
    parser.add_argument("--seed", type=int, default=0, help="added to every cell's seed (an independent repeat)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    world = World(held_out_people=args.held_out)
    table = Table(title=f"P(verdict), {args.runs} runs per cell, alpha 0.05, default margin")
    for col in ("cell", *ORDER, "margin", "bound", "people for 80%"):
        table.add_column(col)
    result = {}
    for i, (name, (w, effects, kw)) in enumerate(cells(world).items()):
        if args.only and args.only not in name:
            continue
        rates, margin, bound, needed = verdict_rates(w, effects, args.runs, seed=1000 * i + 100_000 * args.seed, **kw)
        result[name] = {**{s: rates[s] / args.runs for s in ORDER}, "margin": margin, "bound": bound,
                        "needed": needed}
        table.add_row(name, *(f"{result[name][s]:.3f}" for s in ORDER), f"{margin:.3f}", f"{bound:.3f}",
                      "" if np.isnan(needed) else f"{needed:.0f}")
    console = Console(width=150)
    console.print(table)
    if args.only:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": args.runs, "seed": args.seed, "world": world.__dict__, "rates": result}, f, indent=2)
        return
    path = np.linspace(0.35, -0.25, 13)  # a run that passes the target at check 7 and overshoots after
    monitored = World(world.forget_people, world.held_out_people, world.per_person // 2, world.disagreement)
    residuals = stopping_residuals(monitored, max(20, args.runs // 5), seed=7, path=path)
    rules = Table(title=f"stopping rule: true separation at the returned check ({len(path)} checks from "
                        f"{path[0]:+.2f} to {path[-1]:+.2f}; monitored half: {monitored.per_person} records a person)")
    for col in ("rule", "median |residual|", "P(|residual| > 0.10)", "median residual"):
        rules.add_column(col)
    for rule, vals in residuals.items():
        a = np.abs(vals)
        rules.add_row(rule, f"{np.median(a):.3f}", f"{(a > 0.10).mean():.2f}", f"{np.median(vals):+.3f}")
    console.print(rules)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "world": world.__dict__, "rates": result,
                       "stopping": {k: list(v) for k, v in residuals.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
