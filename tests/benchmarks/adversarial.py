"""Worst-case vs random forget sets and relearning recovery for several methods on the built-in benchmark.

For each method: `unlearn worst-case` (pool = the forget10 split, k records, the gap of the worst-case set
over the mean of random sets in LOSS AUC and privleak), and a relearning attack after unlearning the
whole forget10 split with the method's shipped config and stopping rule (fine-tune on half the forget
people, measure the other half).

    python tests/benchmarks/adversarial.py [--preset default] [--methods graddiff,npo,soul] [--k 40]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import tempfile
from pathlib import Path

from unlearn.auditors.robustness import extraction, relearn_report
from unlearn.auditors.stopping import make_monitor
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.cli.main import main as cli
from unlearn.methods import get_method, load_method_args
from unlearn.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default="graddiff,npo,soul")
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relearn-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, help="override the methods' lr (worst-case search and final runs)")
    ap.add_argument("--steps", type=int, default=10, help="unlearning steps per worst-case run")
    args = ap.parse_args()
    bench = build(args.preset)
    split = bench.retain_split
    forget, holdout = bench.split(split), bench.split("holdout")
    retain = bench.split(RETAIN_OF[split]) + bench.split("utility")
    retain_eval = random.Random(0).sample(retain, 200)
    target, tok = load_model(bench.target)
    original = extraction(target, tok, forget)["exact_match"]
    rows = []
    for name in args.methods.split(","):
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()) as buf:
            extra = []
            if args.lr:
                (Path(tmp) / "lr.yaml").write_text(f"lr: {args.lr}\n")
                extra = ["--config", str(Path(tmp) / "lr.yaml")]
            code = cli(["worst-case", "--preset", args.preset, "--method", name, "--k", str(args.k), "--seed",
                        str(args.seed), "--lower-steps", str(args.steps), "--max-steps", str(args.steps),
                        "--out", str(Path(tmp) / "wc"), "--json", "--quiet", *extra])
        assert code == 0, f"worst-case {name} failed"
        wc = json.loads(buf.getvalue())
        model, _ = load_model(bench.target)
        margs = load_method_args(name, overrides={"seed": args.seed, **({"lr": args.lr} if args.lr else {})})
        res = get_method(name).run(model, tok, forget, retain, margs,
                                   monitor=make_monitor(tok, forget, holdout, retain_eval, margs))
        rel = relearn_report(res.model, tok, forget, holdout, steps=args.relearn_steps, seed=args.seed,
                             original_exact_match=original)
        rows.append({"method": name, "worst_auc": wc["rows"][0]["loss_auc"],
                     "random_auc": wc["random_summary"]["loss_auc"],
                     "gap_auc": wc["gap"]["loss_auc"], "gap_privleak": wc["gap"].get("privleak"),
                     "relearn": rel, "unlearn_steps": res.steps, "stop": res.stop_reason})
    print(f"{args.preset} benchmark, pool = {split} ({len(forget)} records), k = {args.k}, seed {args.seed}; "
          f"relearning: {args.relearn_steps} steps on half the forget people, measured on the other half "
          f"(target exact match {original:.3f})")
    print(f"{'method':10}{'worst AUC':>10}{'random AUC':>18}{'gap AUC':>9}{'gap privleak':>13}"
          f"{'EM before':>10}{'EM after':>9}{'AUC before':>11}{'AUC after':>10}{'recovered':>10}")
    for r in rows:
        rl, ra = r["relearn"], r["random_auc"]
        print(f"{r['method']:10}{r['worst_auc']:10.3f}{ra['mean']:11.3f} ± {ra['std']:.3f}{r['gap_auc']:+9.3f}"
              f"{r['gap_privleak'] or float('nan'):+13.1f}{rl['before']['exact_match']:10.3f}"
              f"{rl['after']['exact_match']:9.3f}{rl['before']['loss_auc']:11.3f}{rl['after']['loss_auc']:10.3f}"
              f"{rl['recovered_fraction']:10.3f}")


if __name__ == "__main__":
    main()
