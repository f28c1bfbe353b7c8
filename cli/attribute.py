"""`unlearn attribute`: rank training datasets by their influence on a test set (UnTrac)."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, load_options, sub_parser
from unlearn.workflows.attribute import AttributeJob, attribute


def add_parser(sub: Any) -> None:
    a = sub_parser(sub, "attribute", "which training dataset caused this behaviour? (UnTrac)")
    a.add_argument("--model", required=True, help="trained model directory (never modified)")
    a.add_argument("--train", nargs="+", required=True, help="candidate training datasets (JSONL), one per file")
    a.add_argument("--test", required=True, help="JSONL of the behaviour to explain")
    a.add_argument("--method", default="untrac", help="untrac, untrac-inv or tracin")
    a.add_argument("--steps", type=int, help="gradient-ascent steps T (default 50)")
    a.add_argument("--lr", type=float, help="ascent learning rate (default 5e-5)")
    a.add_argument("--batch-size", type=int, help="ascent batch size (default 1 for untrac)")
    a.add_argument("--scope", help="parameters to ascend: all, last:N, regex:PATTERN")
    a.add_argument("--seed", type=int)
    a.add_argument("--out", help="NEW output directory (default runs/attribute-TIME)")
    a.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                                   ("seed", args.seed), ("scope", args.scope)) if v is not None}
    result = attribute(AttributeJob(args.model, list(args.train), args.test, args.method, overrides, args.out,
                                       load_options(args)), ui)
    ui.table(f"{args.method}: influence of each training set on {args.test} (higher = helped more)",
             ["dataset", "score", "rank"], [[r["dataset"], r["score"], r["rank"]] for r in result.ranking])
    ui.print(f"results: {result.out / 'attribution.json'}")
    ui.json({**result.payload, "out": str(result.out)})
    return 0
