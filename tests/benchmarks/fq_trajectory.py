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

from removal_table import load_sets, method_overrides, utility

from unlearn.auditors.stopping import make_monitor
from unlearn.auditors.tofu import evaluate_qa, forget_quality
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
    sets = load_sets(args.preset)
    forget, retain, tok, gold = sets.forget, sets.retain, sets.tok, sets.gold
    gold_tr = evaluate_qa(gold, tok, forget, rouge=False)
    target_mu = utility(sets.target, tok, sets.u_sets)
    for name in args.methods.split(","):
        # every check a full one: the path reports each check's AUCs and distance
        overrides = {"max_steps": args.steps, "eval_every": args.every, "eval_schedule": "fixed",
                     "quick_check": 0, "max_utility_drop": 1.0}
        overrides |= method_overrides(name, args.set)
        margs = load_method_args(name, overrides=overrides)
        rule = make_monitor(tok, forget, sets.cal, sets.rcal, margs, gold)
        path = []

        def watch(model, step, rule=rule, path=path, name=name):
            _, _, m = rule(model, step)
            fq = forget_quality(evaluate_qa(model, tok, forget, rouge=False), gold_tr)
            mu = utility(model, tok, sets.u_sets) / target_mu
            row = {"method": name, "step": step, "status": m["status"], "distance": round(m["distance"], 3),
                   "auc_loss": round(m["auc_loss"], 3), "fq": fq, "mu_rel": round(mu, 3)}
            path.append(row)
            print(json.dumps(row), flush=True)
            model.train()
            return None, "", m

        watch.holdout = rule.holdout  # what the rule would give a method that calibrates on never-seen people
        get_method(name).run(load_model(sets.bench.target)[0], tok, forget, retain, margs, monitor=watch)
        ok = [r for r in path if r["fq"] >= 0.1 and r["mu_rel"] >= 0.9]
        best = max(path, key=lambda r: r["fq"])
        print(f"{name}: best FQ {best['fq']:.2e} at step {best['step']} (MU {best['mu_rel']:.3f}, "
              f"status {best['status']}, distance {best['distance']}); steps meeting FQ>=0.1 & MU>=0.9: "
              f"{[r['step'] for r in ok]}", flush=True)


if __name__ == "__main__":
    main()
