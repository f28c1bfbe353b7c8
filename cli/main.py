"""`unlearn`: deletion requests, audits and comparisons for language models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import unlearn  # noqa: F401  (sets the offline environment before transformers is imported)
from rich.text import Text

from cli.ui import UI
from unlearn.errors import UnlearnError

Command = Callable[[argparse.Namespace, UI], int]


def _cache(args: argparse.Namespace) -> Path | None:
    return Path(args.cache) if getattr(args, "cache", None) else None


def builtin_benchmark(args: argparse.Namespace, ui: UI) -> Any:
    """The built-in benchmark (built on first use, with a progress bar)."""
    from unlearn.benchmark.build import build

    with ui.progress() as prog:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, step: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = prog.add_task(f"training {name}", total=total, info="")
            prog.update(tasks[name], completed=step)

        return build(getattr(args, "preset", "default"), cache_dir=_cache(args),
                     force=getattr(args, "force", False), on_progress=on_progress)


def cmd_benchmark_build(args: argparse.Namespace, ui: UI) -> int:
    bench = builtin_benchmark(args, ui)
    report = bench.report
    split = report["config"]["retain_split"]
    rows = []
    for name, m in report["models"].items():
        em = m["exact_match"]
        rows.append([name, m["parameters"], m["train_records"], m["train_seconds"],
                     *em.values()])
    ems = next(iter(report["models"].values()))["exact_match"]
    ui.table(f"built-in benchmark: retain = target without {split}",
             ["model", "params", "train records", "train s", *(f"EM {k}" for k in ems)], rows)
    ui.print(f"target: {bench.target}\nretain: {bench.retain}\ndata:   {bench.root / 'data'}")
    ui.json({"root": str(bench.root), "target": str(bench.target), "retain": str(bench.retain), **report})
    return 0


def cmd_info(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.model import model_info

    info = model_info(args.model)
    ui.table(f"model {args.model}", ["field", "value"], [[k, v] for k, v in asdict(info).items()])
    ui.json(asdict(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout (tables to stderr)")
    common.add_argument("--quiet", action="store_true", help="no tables or progress bars")
    common.add_argument("--cache", help="cache directory for the built-in benchmark (default ~/.cache/unlearn "
                                        "or $UNLEARN_CACHE)")

    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("benchmark", help="the built-in benchmark of fictitious people", parents=[common])
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    b = bsub.add_parser("build", help="build (or reuse) the built-in target and retain models", parents=[common])
    b.add_argument("--preset", default="default", help="default (the real benchmark) or tiny (for tests)")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    b.set_defaults(func=cmd_benchmark_build)

    i = sub.add_parser("info", help="parameters, layers, tokenizer and dtype of a model", parents=[common])
    i.add_argument("model", help="local model directory")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ui = UI(quiet=args.quiet, as_json=args.json)
    try:
        return int(args.func(args, ui))
    except UnlearnError as exc:
        ui.err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        ui.err.print("interrupted: nothing was written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
