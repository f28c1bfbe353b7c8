"""`unlearn worst-case`: the forget set an unlearning method handles worst, against random sets."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from cli.ui import UI


def cmd_worst_case(args: argparse.Namespace, ui: UI) -> int:
    from attacks.adversarial import random_sets, worst_case_set
    from attacks.runner import score_records
    from auditors.metrics import auc, privleak
    from cli.main import new_out_dir, resolve_model, write_outputs
    from unlearn.attribution import restore, snapshot
    from unlearn.benchmark.generator import RETAIN_OF
    from unlearn.data import load_records
    from unlearn.errors import UnlearnError
    from unlearn.methods import get_method, load_method_args
    from unlearn.model import load_model

    model_path, bench = resolve_model(args.model, args, ui)
    if bench is None and not (args.pool and args.holdout and args.retain):
        raise UnlearnError("--pool, --holdout and --retain are required for a model that is not the built-in one")
    pool = load_records(args.pool) if args.pool else bench.split(bench.retain_split)
    holdout = load_records(args.holdout) if args.holdout else bench.split("holdout")
    retain = load_records(args.retain) if args.retain else bench.split(RETAIN_OF[bench.retain_split])
    gold_path = args.retain_model or (str(bench.retain) if bench is not None and not args.pool else None)
    method = get_method(args.method)
    lower = load_method_args(args.method, args.config, {"max_steps": args.lower_steps, "eval_every": 0,
                                                        "seed": args.seed})
    final = load_method_args(args.method, args.config, {"max_steps": args.max_steps, "eval_every": 0,
                                                        "seed": args.seed})
    out = new_out_dir(args.out, "worst-case")
    model, tok = load_model(model_path)
    gold = load_model(gold_path)[0] if gold_path else None

    def unlearn_with(a: Any) -> Any:
        return lambda m, recs: method.run(m, tok, recs, retain, a)

    with ui.progress() as prog:
        task = prog.add_task(f"worst-case search ({args.method})", total=None, info="")
        wc = worst_case_set(model, tok, pool, args.k, unlearn_with(lower), rounds=args.rounds, seed=args.seed,
                            on_round=lambda r, n: prog.update(task, completed=r, total=n))
        sets = {"worst-case": wc.indices, **{f"random-{i + 1}": s for i, s in
                                             enumerate(random_sets(len(pool), args.k, args.random_sets, args.seed))}}
        task2 = prog.add_task("audit of each set", total=len(sets), info="")
        theta0 = snapshot(model)
        rows = []
        for name, idx in sets.items():
            recs = [pool[i] for i in idx]
            method.run(model, tok, recs, retain, final)
            s = score_records(model, tok, [*recs, *holdout], ["loss"]).scores["loss"]
            row = {"set": name, "loss_auc": auc(s[: len(recs)], s[len(recs):]),
                   "residual_mean_logprob": float(s[: len(recs)].mean())}
            if gold is not None:
                g = score_records(gold, tok, [*recs, *holdout], ["loss"]).scores["loss"]
                row["privleak"] = privleak(row["loss_auc"], auc(g[: len(recs)], g[len(recs):]))
            rows.append(row)
            restore(model, theta0)
            prog.advance(task2)
    rand = [r for r in rows if r["set"] != "worst-case"]
    summary = {k: {"mean": float(np.mean([r[k] for r in rand])), "std": float(np.std([r[k] for r in rand]))}
               for k in rows[0] if k != "set"}
    gap = {k: rows[0][k] - summary[k]["mean"] for k in summary}
    ui.table(f"worst-case vs {len(rand)} random forget sets of {args.k} records ({args.method}, "
             f"{args.max_steps} steps)", ["set", *[k for k in rows[0] if k != "set"]],
             [[r["set"], *[r[k] for k in r if k != "set"]] for r in rows])
    ui.print("random sets: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in summary.items()))
    ui.print("gap (worst-case - random mean): " + ", ".join(f"{k} {v:+.3f}" for k, v in gap.items()))
    payload = {"model": str(model_path), "method": args.method, "k": args.k, "seed": args.seed,
               "selected_ids": [pool[i].id for i in wc.indices], "rows": rows, "random_summary": summary,
               "gap": gap, "search_history": wc.history}
    write_outputs(out, {
        "selected.jsonl": lambda p: p.write_text("".join(json.dumps({"id": pool[i].id}) + "\n" for i in wc.indices)),
        "worst_case.json": lambda p: p.write_text(json.dumps(payload, indent=2))})
    ui.print(f"selected set (a deletion-request file): {out / 'selected.jsonl'}; report {out / 'worst_case.json'}")
    ui.json({**payload, "out": str(out)})
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("worst-case", help="find the forget set a method handles worst (Challenging Forgets)",
                       parents=[common])
    w.add_argument("--model", help="model directory (default: the built-in target)")
    w.add_argument("--pool", help="candidate records JSONL (default: the built-in forget split)")
    w.add_argument("--holdout", help="non-member JSONL for the audit (default: built-in holdout)")
    w.add_argument("--retain", help="retain records JSONL for the method (default: built-in retain split)")
    w.add_argument("--retain-model", help="model trained without the pool (adds privleak)")
    w.add_argument("--k", type=int, default=40, help="size of the forget set")
    w.add_argument("--method", default="npo")
    w.add_argument("--config", help="method yaml")
    w.add_argument("--rounds", type=int, default=4, help="outer rounds after the first sweep over the pool")
    w.add_argument("--lower-steps", type=int, default=10, help="unlearning steps inside each round")
    w.add_argument("--max-steps", type=int, default=10, help="unlearning steps for the final comparison")
    w.add_argument("--random-sets", type=int, default=3)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", help="NEW output directory (default runs/worst-case-TIME)")
    w.set_defaults(func=cmd_worst_case)
