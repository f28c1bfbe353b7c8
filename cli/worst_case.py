"""`unlearn worst-case`: the forget set an unlearning method handles worst, against random sets."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, benchmark_options, load_options, sub_parser
from unlearn.config import DEFAULT_METHOD
from unlearn.workflows.worst_case import WorstCaseJob, worst_case


def add_parser(sub: Any) -> None:
    w = sub_parser(sub, "worst-case", "find the forget set a method handles worst (Challenging Forgets)")
    w.add_argument("--model", help="model directory (default: the built-in target)")
    w.add_argument("--pool", help="candidate records JSONL (default: the built-in forget split)")
    w.add_argument("--holdout", help="non-member JSONL for the audit (default: built-in holdout)")
    w.add_argument("--retain", help="retain records JSONL for the method (default: built-in retain split)")
    w.add_argument("--retain-model", help="model trained without the pool (adds privleak)")
    w.add_argument("--k", type=int, default=40, help="size of the forget set")
    w.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"a registered method (unlearn methods); default {DEFAULT_METHOD}")
    w.add_argument("--config", help="method yaml or shipped preset name")
    w.add_argument("--rounds", type=int, default=4, help="outer rounds after the first sweep over the pool")
    w.add_argument("--lower-steps", type=int, default=10, help="unlearning steps inside each round")
    w.add_argument("--max-steps", type=int, default=10, help="unlearning steps for the final comparison")
    w.add_argument("--random-sets", type=int, default=3)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", help="NEW output directory (default runs/worst-case-TIME)")
    w.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    job = WorstCaseJob(model=args.model, pool=args.pool, holdout=args.holdout, retain=args.retain,
                       retain_model=args.retain_model, k=args.k, method=args.method, config=args.config,
                       rounds=args.rounds, lower_steps=args.lower_steps, max_steps=args.max_steps,
                       random_sets=args.random_sets, seed=args.seed, out=args.out, benchmark=benchmark_options(args),
                       load=load_options(args))
    r = worst_case(job, ui)
    metrics = [k for k in r.rows[0] if k != "set"]
    ui.table(f"worst-case vs {len(r.rows) - 1} random forget sets of {args.k} records ({args.method}, "
             f"{args.max_steps} steps)", ["set", *metrics],
             [[row["set"], *[row[k] for k in metrics]] for row in r.rows])
    spread = (f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in r.random_summary.items())
    ui.print("random sets: " + ", ".join(spread))
    ui.print("gap (worst-case - random mean): " + ", ".join(f"{k} {v:+.3f}" for k, v in r.gap.items()))
    ui.print(f"selected set (a deletion-request file): {r.out / 'selected.jsonl'}; report {r.out / 'worst_case.json'}")
    ui.json({**r.payload, "out": str(r.out)})
    return 0
