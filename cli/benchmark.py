"""`unlearn benchmark build`: build (or reuse) the built-in target and retain models."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, benchmark_options, sub_parser


def add_parser(sub: Any) -> None:
    bench = sub_parser(sub, "benchmark", "the built-in benchmark of fictitious people")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    b = sub_parser(bsub, "build", "build (or reuse) the built-in target and retain models")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    b.set_defaults(run=run_build)


def run_build(args: argparse.Namespace, ui: UI) -> int:
    bench = benchmark_options(args).build(ui)
    report = bench.report
    rows = []
    for name, m in report["models"].items():
        rows.append([name, m["parameters"], m["train_records"], m["train_seconds"], *m["exact_match"].values()])
    ems = next(iter(report["models"].values()))["exact_match"]
    ui.table(f"built-in benchmark: retain = target without {report['config']['retain_split']}",
             ["model", "params", "train records", "train s", *(f"EM {k}" for k in ems)], rows)
    ui.print(f"target: {bench.target}\nretain: {bench.retain}\ndata:   {bench.root / 'data'}")
    ui.json({"root": str(bench.root), "target": str(bench.target), "retain": str(bench.retain), **report})
    return 0
