"""Every shipped method on the built-in forget split, judged as a receipt judges it: the stopping rule on the
calibration split, then on the verdict split the two-sided verdict (relative to the retain model) and AUC per
score, as is / after 8- and 4-bit RTN quantization / after relearning, with forget quality against the retain
model, TOFU model utility relative to the target, and the cost: unlearning wall time relative to training the
retain model; the stopping rule's and the battery's time (as a receipt runs it: no relearning, no attack
after the first NOT REMOVED, first looks) relative to the unlearning proper ("cost", the issue's 25% bound), and the
retain model's scores under the battery's attacks, computed once per request for all methods, relative to
each method's unlearning.

    python tests/benchmarks/removal_table.py [--preset default] [--methods graddiff,npo] [--set npo.lr=2e-4]
        [--people 5] [--no-relearn-attack]
    python tests/benchmarks/removal_table.py --real /tmp/real-table --max-steps 20 --batch-size 8   # SmolLM2

Every registered method by default; ``--people N`` adds N single-person requests (people of the forget split,
one request each) after the whole split; each row also gives the whole request's time (unlearning, stopping
rule and the receipt's battery) relative to training the retain model, peak memory, and the robustification
stage's statistics when a method ran one (``--set target_match.robustify_alpha=0.6``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import yaml

from unlearn.auditors.battery import BatteryArgs, reference_scores, removal_battery
from unlearn.auditors.stopping import make_monitor, returned_scores
from unlearn.auditors.tofu import evaluate_qa, forget_quality, model_utility
from unlearn.benchmark.build import Benchmark, build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.config import LoadOptions
from unlearn.methods import METHODS, get_method, load_method_args, measured
from unlearn.model import load_model
from unlearn.splits import split_by_group


@dataclasses.dataclass
class Sets:
    """The built-in forget split with its calibration / verdict halves, as the benchmarks of #14 use them."""

    bench: Any
    forget: list
    retain: list
    cal: list  # the stopping rule's half of the holdout
    ver: list  # the verdict's half
    rcal: list  # the stopping rule's half of 200 retain records
    u_sets: tuple  # model utility: the other half of those retain records, real authors, world facts
    target: Any
    tok: Any
    gold: Any  # the retain model


def load_sets(preset: str, real: str | None = None) -> Sets:
    """The preset's built-in benchmark, or (``real``) the fine-tuned pretrained models and record files of
    `real_model.py --table` (chat template)."""
    bench = build(preset) if real is None else RealBenchmark(Path(real))
    split = bench.retain_split
    forget, holdout, retain = bench.split(split), bench.split("holdout"), bench.split(RETAIN_OF.get(split, "retain"))
    cal, ver = split_by_group(holdout)
    rcal, rver = split_by_group(random.Random(0).sample(retain, min(200, len(retain))))
    target, tok = load_model(bench.target, options_of(bench))
    return Sets(bench, forget, retain, cal, ver, rcal, (rver, bench.split("real_authors"), bench.split("world_facts")),
                target, tok, load_model(bench.retain, options_of(bench))[0])


def options_of(bench: Any) -> LoadOptions | None:
    """How the benchmark's models load (the fine-tuned chat model: its template); None: the defaults."""
    return getattr(bench, "load", None)


@dataclasses.dataclass(frozen=True)
class RealBenchmark(Benchmark):
    """`real_model.py --table`'s directory, laid out as a built benchmark (target/, retain/, data/<split>.jsonl,
    report.json), whose forget split is ``forget`` and whose models load in their chat template."""

    load: LoadOptions = dataclasses.field(default_factory=lambda: LoadOptions(template="chat"))

    @property
    def retain_split(self) -> str:
        return "forget"


def method_overrides(name: str, specs: list[str]) -> dict[str, Any]:
    """``method.key=value`` command-line overrides that name ``name``."""
    return {k.split(".", 1)[1].split("=")[0]: yaml.safe_load(k.split("=", 1)[1])
            for k in specs if k.split(".")[0] == name}


def utility(model, tok, sets) -> float:
    retain, ra, wf = sets
    return model_utility(evaluate_qa(model, tok, retain), *(evaluate_qa(model, tok, s, true_side="answer")
                                                            for s in (ra, wf)))


def requests_of(sets: Sets, people: int) -> list[tuple[str, list]]:
    """The requests a table is measured on: the whole forget split, then ``people`` of its people one at a time."""
    ids = sorted({r.meta["person"] for r in sets.forget})[:people]
    return [(sets.bench.retain_split, sets.forget)] + [(p, [r for r in sets.forget if r.meta["person"] == p])
                                                       for p in ids]


def method_row(name: str, overrides: dict[str, Any], sets: Sets, forget: list, reference: Any,
               battery_args: BatteryArgs, retrain: float, target_utility: float, gold_tr: Any) -> dict[str, Any]:
    """One method on one request: the stopping rule on the calibration split, the receipt's battery, the full one."""
    tok = sets.tok
    kept: dict = {}  # the rule's full-check forget scores: the receipt's "as is" reuses the returned weights'
    if name == "target":
        model, res = sets.target, None
    else:
        margs = load_method_args(name, overrides=overrides)
        model = load_model(sets.bench.target, options_of(sets.bench))[0]
        rule_s = [0.0]

        def monitor(m, step, rule=make_monitor(tok, forget, sets.cal, sets.rcal, margs, sets.gold, kept=kept),
                    spent=rule_s):
            t = time.perf_counter()  # the stopping rule's own time, inside the unlearning
            out = rule(m, step)
            spent[0] += time.perf_counter() - t
            return out

        monitor.holdout = sets.cal  # the rule's never-seen people, for a method that calibrates on them
        res = measured(get_method(name).run, model, tok, forget, sets.retain, margs, monitor=monitor)
        model = res.model
    start = time.perf_counter()  # the battery as a receipt runs it (its cost), then every attack in full
    known = returned_scores(res, kept) if res else None
    receipt = removal_battery(model, tok, forget, sets.ver, BatteryArgs(seed=battery_args.seed), reference=reference,
                              known=known)
    no_relearn = time.perf_counter() - start
    start = time.perf_counter()
    battery = removal_battery(model, tok, forget, sets.ver, battery_args, reference=reference, known=known)
    battery_s = time.perf_counter() - start
    proper = max(res.wall_seconds - rule_s[0], 1e-9) if res else 0.0  # the unlearning without the rule
    return {"method": name, "verdict": battery.verdict.status, "receipt_verdict": receipt.verdict.status,
            "receipt_attacks": [r.attack for r in receipt.rows], "receipt_notes": receipt.notes,
            "attacks": {r.attack: (r.verdict.status, {e.score: round(e.auc, 3) for e in r.verdict.evidence},
                                   r.extraction["exact_match"]) for r in battery.rows},
            "flagged": {r.attack: [f"{f.person} {f.score} t {f.t:+.1f}" for f in r.verdict.people]
                        for r in battery.rows if r.verdict.people},
            "why": {r.attack: r.verdict.message.split(" [")[0] for r in battery.rows},
            "forget_quality": forget_quality(evaluate_qa(model, tok, forget, rouge=False), gold_tr),
            "utility_rel": utility(model, tok, sets.u_sets) / target_utility,
            "steps": res.steps if res else 0, "stop": res.stop_reason if res else "-",
            "checks": len(res.history) if res else 0,
            "full_checks": sum(not h.get("quick") for h in res.history) if res else 0,
            "path": [{k: h[k] for k in ("step", "status", "distance", "relearned", "relearned_distance") if k in h}
                     for h in res.history if not h.get("quick")] if res else [],
            "robustify": res.stats.get("robustify") if res else None,
            "peak_memory_mb": res.peak_memory_mb if res else None,
            "rule_vs_unlearning": rule_s[0] / proper if res else None,
            "battery_no_relearn_vs_unlearning": no_relearn / proper if res else None,
            "time_vs_retrain": (res.wall_seconds / retrain) if res else 0.0,
            # the whole request as a receipt runs it: unlearning + stopping rule + the receipt's battery
            "request_vs_retrain": ((res.wall_seconds + no_relearn) / retrain) if res else 0.0,
            "battery_vs_unlearning": (battery_s / res.wall_seconds) if res else None,
            # the cost target: stopping rule + battery without relearning, over the unlearning proper
            "evidence_cost": (rule_s[0] + no_relearn) / proper if res else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(METHODS.names()))
    ap.add_argument("--people", type=int, default=0, help="also this many single-person requests")
    ap.add_argument("--relearn-attack", action=argparse.BooleanOptionalAction, default=True,
                    help="the full battery's relearning attack")
    ap.add_argument("--set", action="append", default=[], help="method.key=value overrides")
    ap.add_argument("--real", default=None, help="the directory of `real_model.py --table` (a fine-tuned SmolLM2) "
                                                 "instead of a preset")
    ap.add_argument("--max-steps", type=int, default=None, help="max_steps of every method")
    ap.add_argument("--batch-size", type=int, default=None, help="batch_size and retain_batch_size of every method")
    ap.add_argument("--battery-seed", type=int, default=0, help="the battery's seed (which half of the forget "
                                                                 "people the relearning attack relearns; receipts: 0)")
    args = ap.parse_args()
    common = {k: v for k, v in (("max_steps", args.max_steps), ("batch_size", args.batch_size),
                                ("retain_batch_size", args.batch_size)) if v is not None}
    sets = load_sets(args.preset, args.real)
    target_utility = utility(sets.target, sets.tok, sets.u_sets)
    retrain = json.loads((sets.bench.root / "report.json").read_text())["models"]["retain"]["train_seconds"]
    battery_args = BatteryArgs(relearn=args.relearn_attack, exhaustive=True, seed=args.battery_seed)
    rows = []
    for request, forget in requests_of(sets, args.people):
        gold_tr = evaluate_qa(sets.gold, sets.tok, forget, rouge=False)
        reference = reference_scores(sets.gold, sets.tok, forget, sets.ver, battery_args)  # shared by the methods
        for name in ["target", *args.methods.split(",")]:
            overrides = {**common, **method_overrides(name, args.set)}
            row = {"request": request, **method_row(name, overrides, sets, forget, reference, battery_args, retrain,
                                                    target_utility, gold_tr)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'request':10}{'method':13}{'verdict':15}{'receipt':15}{'FQ':>9}{'MU rel':>8}{'steps':>6}"
          f"{'checks':>11} {'stop':22}{'req/retr':>9}{'battery/t':>10}{'rule':>6}{'batt.':>6}{'cost':>6}  "
          "per attack: status (LOSS / Min-K%++ AUC)")
    for r in rows:
        per = "; ".join(f"{a}: {s} ({aucs['loss']:.2f}/{aucs['minkpp']:.2f})"
                        for a, (s, aucs, _) in r["attacks"].items())
        bt = f"{r['battery_vs_unlearning']:.2f}" if r["battery_vs_unlearning"] is not None else "-"
        cost = f"{r['evidence_cost']:.2f}" if r["evidence_cost"] is not None else "-"
        parts = "".join(f"{r[k]:6.2f}" if r[k] is not None else f"{'-':>6}"
                        for k in ("rule_vs_unlearning", "battery_no_relearn_vs_unlearning"))
        print(f"{r['request']:10}{r['method']:13}{r['verdict']:15}{r['receipt_verdict']:15}{r['forget_quality']:9.2e}"
              f"{r['utility_rel']:8.3f}{r['steps']:6d}{r['checks']:5d} ({r['full_checks']:3d}) {r['stop']:22}"
              f"{r['request_vs_retrain']:9.2f}{bt:>10}{parts}{cost:>6}  {per}")


if __name__ == "__main__":
    main()
