"""Every first-order method on a built-in forget split, against the retrain gold standard.

Prints, per method: forget-vs-holdout LOSS AUC after unlearning, privleak vs the built-in retain
model, retain utility relative to the target (mean retain-answer probability, and TOFU model
utility), steps, why it stopped, and wall time relative to training the retain model from scratch
(the build's own measurement of it).

    python tests/benchmarks/forget_methods.py [--preset default] [--split forget10]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import unlearn  # noqa: F401
from auditors.metrics import privleak
from auditors.stopping import forget_check, make_monitor
from auditors.tofu import evaluate_qa, forget_quality, model_utility
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.methods import get_method, load_method_args
from unlearn.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--methods", default="grad_ascent,graddiff,npo,simnpo")
    ap.add_argument("--lr", type=float, help="override every method's lr")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    bench = build(args.preset)
    forget, holdout = bench.split(args.split), bench.split("holdout")
    retain = bench.split(RETAIN_OF[args.split]) + bench.split("utility")
    retain_eval = random.Random(0).sample(retain, 200)
    utility_sets = (random.Random(1).sample(bench.split(RETAIN_OF[args.split]), 200), bench.split("utility")[:200])
    retrain_s = bench.report["models"]["retain"]["train_seconds"]
    gold, tok = load_model(bench.retain)
    gold_check = forget_check(gold, tok, forget, holdout, retain_eval)
    gold_tr = evaluate_qa(gold, tok, forget, rouge=False)
    target, _ = load_model(bench.target)
    target_check = forget_check(target, tok, forget, holdout, retain_eval)
    target_mu = model_utility(*(evaluate_qa(target, tok, s) for s in utility_sets))
    rows = [{"method": "target", "forget_auc": target_check["forget_auc"],
             "privleak": privleak(target_check["forget_auc"], gold_check["forget_auc"]),
             "forget_quality": forget_quality(evaluate_qa(target, tok, forget, rouge=False), gold_tr),
             "retain_prob_rel": 1.0, "model_utility_rel": 1.0, "steps": 0, "stop": "-", "time_rel": 0.0},
            {"method": "retain (retrain)", "forget_auc": gold_check["forget_auc"], "privleak": 0.0,
             "forget_quality": 1.0, "retain_prob_rel": gold_check["retain_prob"] / target_check["retain_prob"],
             "model_utility_rel": model_utility(*(evaluate_qa(gold, tok, s) for s in utility_sets)) / target_mu,
             "steps": 0, "stop": "-", "time_rel": 1.0}]
    for name in args.methods.split(","):
        model, _ = load_model(bench.target)
        margs = load_method_args(name, overrides={"lr": args.lr} if args.lr else None)
        t = time.perf_counter()
        res = get_method(name).run(model, tok, forget, retain, margs,
                                   monitor=make_monitor(tok, forget, holdout, retain_eval, margs))
        wall = time.perf_counter() - t
        after = forget_check(res.model, tok, forget, holdout, retain_eval)
        rows.append({"method": name, "forget_auc": after["forget_auc"],
                     "privleak": privleak(after["forget_auc"], gold_check["forget_auc"]),
                     "forget_quality": forget_quality(evaluate_qa(res.model, tok, forget, rouge=False), gold_tr),
                     "retain_prob_rel": after["retain_prob"] / target_check["retain_prob"],
                     "model_utility_rel": model_utility(*(evaluate_qa(res.model, tok, s) for s in utility_sets))
                     / target_mu, "steps": res.steps, "stop": res.stop_reason, "time_rel": wall / retrain_s,
                     "wall_s": wall, "peak_mb": res.peak_memory_mb})
    print(f"{args.preset} benchmark, {args.split} ({len(forget)} records) vs holdout ({len(holdout)}); "
          f"retrain from scratch took {retrain_s:.0f} s")
    print(f"{'method':18}{'AUC':>7}{'privleak%':>11}{'FQ':>10}{'retainP':>9}{'MU':>7}{'steps':>7}  "
          f"{'stop':22}{'time/retrain':>12}")
    for r in rows:
        print(f"{r['method']:18}{r['forget_auc']:7.3f}{r['privleak']:11.1f}{r['forget_quality']:10.2e}"
              f"{r['retain_prob_rel']:9.3f}{r['model_utility_rel']:7.3f}{r['steps']:7d}  {r['stop']:22}"
              f"{r['time_rel']:12.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
