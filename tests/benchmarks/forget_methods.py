"""Unlearning methods on a built-in forget split, against the retrain gold standard.

Prints, per method: forget-vs-holdout LOSS AUC after unlearning, privleak vs the built-in retain
model, forget quality, retain utility relative to the target (mean retain-answer probability, and TOFU
model utility), steps, why it stopped, wall time relative to training the retain model from scratch
(the build's own measurement of it) and peak memory relative to retraining. Each method runs in its own
process so that peak RSS is its own; retraining's peak is measured over its first 30 steps.

    python tests/benchmarks/forget_methods.py [--preset default] [--split forget10]
        [--methods graddiff,npo,newton,iau,soul] [--set soul.lr=1e-4 --set newton.curvature=gnb]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import yaml

from unlearn.auditors.metrics import privleak
from unlearn.auditors.stopping import forget_check, make_monitor
from unlearn.auditors.tofu import evaluate_qa, forget_quality, model_utility
from unlearn.benchmark.build import PRESETS, build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.methods import get_method, load_method_args
from unlearn.model import load_model


def _utility(model, tok, sets) -> float:
    """TOFU's model utility over (retain, real_authors, world_facts)."""
    retain, ra, wf = sets
    views = (evaluate_qa(model, tok, s, true_side="answer") for s in (ra, wf))
    return model_utility(evaluate_qa(model, tok, retain), *views)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--methods", default="grad_ascent,graddiff,npo,simnpo,newton,iau,soul",
                    help="names, or label=name to run one method twice with different --set values")
    ap.add_argument("--lr", type=float, help="override every method's lr")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL.KEY=VALUE",
                    help="override one argument of one method (value parsed as yaml)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this label, print its row as JSON
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(args)))
        return
    bench = build(args.preset)
    forget, holdout = bench.split(args.split), bench.split("holdout")
    retain = bench.split(RETAIN_OF[args.split]) + bench.split("utility")
    retain_eval = random.Random(0).sample(retain, 200)
    utility_sets = (random.Random(1).sample(bench.split(RETAIN_OF[args.split]), 200), bench.split("real_authors"),
                    bench.split("world_facts"))
    retrain_s = bench.report["models"]["retain"]["train_seconds"]
    gold, tok = load_model(bench.retain)
    gold_check = forget_check(gold, tok, forget, holdout, retain_eval)
    gold_tr = evaluate_qa(gold, tok, forget, rouge=False)
    target, _ = load_model(bench.target)
    target_check = forget_check(target, tok, forget, holdout, retain_eval)
    target_mu = _utility(target, tok, utility_sets)
    rows = [{"method": "target", "forget_auc": target_check.forget_auc,
             "privleak": privleak(target_check.forget_auc, gold_check.forget_auc),
             "forget_quality": forget_quality(evaluate_qa(target, tok, forget, rouge=False), gold_tr),
             "retain_prob_rel": 1.0, "model_utility_rel": 1.0, "steps": 0, "stop": "-", "time_rel": 0.0},
            {"method": "retain (retrain)", "forget_auc": gold_check.forget_auc, "privleak": 0.0,
             "forget_quality": 1.0, "retain_prob_rel": gold_check.retain_prob / target_check.retain_prob,
             "model_utility_rel": _utility(gold, tok, utility_sets) / target_mu,
             "steps": 0, "stop": "-", "time_rel": 1.0}]
    retrain_peak = _child(args, "retrain")["peak_mb"]
    rows[1]["mem_rel"] = 1.0
    for label in args.methods.split(","):
        row = _child(args, label)
        rows.append({**row, "time_rel": row["wall_s"] / retrain_s, "mem_rel": row["peak_mb"] / retrain_peak})
    print(f"{args.preset} benchmark, {args.split} ({len(forget)} records) vs holdout ({len(holdout)}); "
          f"retrain from scratch took {retrain_s:.0f} s")
    print(f"{'method':18}{'AUC':>7}{'privleak%':>11}{'FQ':>10}{'retainP':>9}{'MU':>7}{'steps':>7}  "
          f"{'stop':22}{'time/retrain':>13}{'mem/retrain':>12}")
    for r in rows:
        print(f"{r['method']:18}{r['forget_auc']:7.3f}{r['privleak']:11.1f}{r['forget_quality']:10.2e}"
              f"{r['retain_prob_rel']:9.3f}{r['model_utility_rel']:7.3f}{r['steps']:7d}  {r['stop']:22}"
              f"{r['time_rel']:13.4f}{r.get('mem_rel', float('nan')):12.2f}")
    print("(peak memory: each method's process, peak RSS net of the RSS after loading the model and data)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace, label: str) -> dict:
    cmd = [sys.executable, __file__, "--preset", args.preset, "--split", args.split, "--one", label,
           *(f"--set={s}" for s in args.set), *(["--lr", str(args.lr)] if args.lr else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if out.returncode or not rows:
        raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(rows[-1])


def run_one(args: argparse.Namespace) -> dict:
    """One method (or 'retrain') in this process; peak memory net of loading the model and data."""
    import torch

    from unlearn.training import train_lm

    bench = build(args.preset)
    forget, holdout = bench.split(args.split), bench.split("holdout")
    retain = bench.split(RETAIN_OF[args.split]) + bench.split("utility")
    retain_eval = random.Random(0).sample(retain, 200)
    model, tok = load_model(bench.target)
    base = _rss_mb()
    if args.one == "retrain":
        recipe = PRESETS[args.preset].recipe
        train_lm(model, retain, tok, type(recipe.train)(**{**recipe.train.to_dict(), "epochs": 30 * recipe.train
                                                             .batch_size / len(retain)}))
        return {"peak_mb": _rss_mb() - base}
    label, _, name = args.one.partition("=")
    name = name or label
    overrides = {k.split(".", 1)[1].split("=", 1)[0]: yaml.safe_load(k.split("=", 1)[1])
                 for k in args.set if k.split(".", 1)[0] == label}
    margs = load_method_args(name, overrides={**({"lr": args.lr} if args.lr else {}), **overrides})
    gold, _ = load_model(bench.retain)
    gold_check = forget_check(gold, tok, forget, holdout, retain_eval)
    gold_tr = evaluate_qa(gold, tok, forget, rouge=False)
    target_check = forget_check(model, tok, forget, holdout, retain_eval)
    utility_sets = (random.Random(1).sample(bench.split(RETAIN_OF[args.split]), 200), bench.split("real_authors"),
                    bench.split("world_facts"))
    target_mu = _utility(model, tok, utility_sets)
    del gold
    torch.manual_seed(0)
    t = time.perf_counter()
    res = get_method(name).run(model, tok, forget, retain, margs,
                               monitor=make_monitor(tok, forget, holdout, retain_eval, margs))
    wall = time.perf_counter() - t
    peak = _rss_mb() - base
    after = forget_check(res.model, tok, forget, holdout, retain_eval)
    return {"method": label + (f" ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""),
            "forget_auc": after.forget_auc, "privleak": privleak(after.forget_auc, gold_check.forget_auc),
            "forget_quality": forget_quality(evaluate_qa(res.model, tok, forget, rouge=False), gold_tr),
            "retain_prob_rel": after.retain_prob / target_check.retain_prob,
            "model_utility_rel": _utility(res.model, tok, utility_sets) / target_mu,
            "steps": res.steps, "stop": res.stop_reason, "wall_s": wall, "peak_mb": peak}


if __name__ == "__main__":
    main()
