"""`unlearn compare`: several unlearning methods on one forget set, side by side."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, add_data_args, benchmark_options, comma_list, data_sources, load_options, sub_parser
from unlearn.workflows.compare import COLUMNS, CompareJob, compare


def add_parser(sub: Any) -> None:
    c = sub_parser(sub, "compare", "run several unlearning methods on one forget set and compare them")
    c.add_argument("--config", help="compare yaml, or a shipped preset name (configs/compare: all, soul_vs_adamw)")
    c.add_argument("--methods", help="comma list of methods (default: every registered method)")
    c.add_argument("--model", help="input model directory (never modified); default: the built-in target")
    c.add_argument("--retain-model", help="model retrained without the forget set (privleak, forget quality)")
    c.add_argument("--adapter", help="a LoRA adapter directory on --model: every method unlearns its parameters "
                                     "(scope lora), the base stays untouched")
    add_data_args(c)
    c.add_argument("--max-steps", type=int, help="override max_steps of every method")
    c.add_argument("--seed", type=int, help="seed for every method (default 0)")
    c.add_argument("--out", help="NEW output directory (default runs/compare-TIME)")
    c.add_argument("--accelerate-config", help="launch through `accelerate launch` with this config "
                                               "(a file or a shipped name from configs/accelerate)")
    c.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    job = CompareJob(config=args.config, methods=comma_list(args.methods) or None, model=args.model,
                     retain_model=args.retain_model, data=data_sources(args), max_steps=args.max_steps,
                     seed=args.seed, out=args.out, benchmark=benchmark_options(args),
                     load=load_options(args), adapter=args.adapter)
    result = compare(job, ui)
    rows = result.rows
    evidence = {"label", "verdict", "auc_loss", "auc_zlib", "auc_mink", "auc_minkpp", "privleak_mink", "steps",
                "stop_reason"}
    for title, keys in ((f"compare on {result.label}: the receipt's verdict (attack battery on the held-out half) "
                         "and AUC forget vs holdout (0.5 = undetectable; privleak vs retain model)",
                         [c for c in COLUMNS if c[0] in evidence]),
                        ("quality and cost", [c for c in COLUMNS if c[0] not in evidence or c[0] == "label"])):
        present = [(k, name) for k, name in keys if any(k in r for r in rows)]
        ui.table(title, [name for _, name in present], [[r.get(k) for k, _ in present] for r in rows])
    ui.print("[dim]AUCs are per record; p-values and exchangeability caveats: see `unlearn audit`.[/]")
    out = result.out
    ui.print(f"results: {out / 'compare.json'}, {out / 'compare.csv'}, plot {out / 'compare.png'}, "
             f"open-unlearning files in {out}/<method>/")
    ui.json({**result.payload, "out": str(out)})
    return 0
