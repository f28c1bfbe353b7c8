"""Where along an unlearning run forget quality (TOFU, vs the retain model) and model utility are: each method
runs without stopping (its stopping rule only watched) and, at every check, reports the stopping rule's
distance and status on the calibration split, forget quality on the whole forget set and model utility relative
to the target. It answers whether any point of the path meets FQ >= 0.1 with MU >= 0.9x, and whether the
stopping rule would stop near it.

    python tests/benchmarks/fq_trajectory.py [--preset default] [--methods npo,graddiff] [--set npo.lr=2e-5]
"""

from __future__ import annotations

import argparse
import json
import random

import yaml

from unlearn.auditors.battery import split_by_group
from unlearn.auditors.stopping import make_monitor
from unlearn.auditors.tofu import evaluate_qa, forget_quality, model_utility
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.methods import get_method, load_method_args
from unlearn.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default="graddiff,npo,simnpo,soul")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="method.key=value overrides")
    args = ap.parse_args()
    bench = build(args.preset)
    split = bench.retain_split
    forget, holdout, retain = bench.split(split), bench.split("holdout"), bench.split(RETAIN_OF[split])
    cal, _ = split_by_group(holdout)
    retain_eval = random.Random(0).sample(retain, 200)
    rcal, rver = split_by_group(retain_eval)
    u_sets = (bench.split("real_authors"), bench.split("world_facts"))
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    gold_tr = evaluate_qa(gold, tok, forget, rouge=False)

    def utility(model) -> float:
        return model_utility(evaluate_qa(model, tok, rver), *(evaluate_qa(model, tok, s, true_side="answer")
                                                              for s in u_sets))

    target_mu = utility(target)
    for name in args.methods.split(","):
        overrides = {"max_steps": args.steps, "eval_every": args.every, "eval_schedule": "fixed",
                     "max_utility_drop": 1.0}
        overrides |= {k.split(".", 1)[1].split("=")[0]: yaml.safe_load(k.split("=", 1)[1])
                      for k in args.set if k.split(".")[0] == name}
        margs = load_method_args(name, overrides=overrides)
        rule = make_monitor(tok, forget, cal, rcal, margs, gold)
        path = []

        def watch(model, step, rule=rule, path=path, name=name):
            _, _, m = rule(model, step)
            fq = forget_quality(evaluate_qa(model, tok, forget, rouge=False), gold_tr)
            row = {"method": name, "step": step, "status": m["status"], "distance": round(m["distance"], 3),
                   "auc_loss": round(m["auc_loss"], 3), "fq": fq, "mu_rel": round(utility(model) / target_mu, 3)}
            path.append(row)
            print(json.dumps(row), flush=True)
            model.train()
            return None, "", m

        get_method(name).run(load_model(bench.target)[0], tok, forget, retain, margs, monitor=watch)
        ok = [r for r in path if r["fq"] >= 0.1 and r["mu_rel"] >= 0.9]
        best = max(path, key=lambda r: r["fq"])
        print(f"{name}: best FQ {best['fq']:.2e} at step {best['step']} (MU {best['mu_rel']:.3f}, "
              f"status {best['status']}, distance {best['distance']}); steps meeting FQ>=0.1 & MU>=0.9: "
              f"{[r['step'] for r in ok]}", flush=True)


if __name__ == "__main__":
    main()
