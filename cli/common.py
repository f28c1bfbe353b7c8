"""What every subcommand shares: console output (rich tables, progress, --json, --quiet), the global
flags, and the arguments that become workflow options."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from unlearn.config import LoadOptions
from unlearn.workflows.common import BenchmarkOptions, DataSources, Reporter

GLOBAL_FLAGS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--json",), {"action": "store_true", "help": "print one JSON document on stdout (tables to stderr)"}),
    (("--quiet",), {"action": "store_true", "help": "no tables or progress bars"}),
    (("--debug",), {"action": "store_true", "help": "show the full traceback of an error"}),
    (("--cache",), {"help": "cache directory for the built-in benchmark (default ~/.cache/unlearn or $UNLEARN_CACHE)"}),
    (("--preset",), {"default": "default", "help": "built-in benchmark preset used when no model/data is given: "
                                                  "default or tiny"}),
    (("--template",), {"help": "prompt format of QA records: plain ('Question: ...\\nAnswer: ...', default), chat "
                               "(the tokenizer's chat template, loss on the assistant turn), a format string with "
                               "{question}, or a yaml file (kind, prompt, response, system)"}),
    (("--dtype",), {"choices": ("float32", "bfloat16", "float16", "auto"), "help": "weights dtype of every model "
                                                                                 "loaded (default float32)"}),
    (("--device",), {"help": "device for scoring and audits, e.g. cuda:0 (default: the accelerator's, else cpu)"}),
    (("--trust-remote-code",), {"action": "store_true", "help": "let a model's own Python code run when loading it"}),
]


def add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global flags, accepted before or after any subcommand: on subparsers they default to SUPPRESS so
    that a value given before the subcommand is not reset by the subparser's default."""
    for names, kw in GLOBAL_FLAGS:
        parser.add_argument(*names, **(kw if top else {**kw, "default": argparse.SUPPRESS}))


def sub_parser(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    add_global_flags(p, top=False)
    return p


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The global model-loading flags; a bad ``--template`` is refused here, before any work."""
    if args.template is not None:
        from unlearn.data import parse_format

        parse_format(args.template)
    return LoadOptions(args.template, args.dtype or "float32", args.device, args.trust_remote_code)


def benchmark_options(args: argparse.Namespace) -> BenchmarkOptions:
    return BenchmarkOptions(args.preset, args.cache, getattr(args, "force", False))


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", help="deletion-request JSONL ({\"id\": ...} or {\"text\": ...} per line); "
                                      "default with the built-in model: one built-in person")
    p.add_argument("--manifest", help="training-data manifest JSONL (id, source, sha256)")
    p.add_argument("--data", nargs="+", help="training-data JSONL file(s) holding the records")
    p.add_argument("--holdout", help="non-member JSONL for the stopping rule and the audit")
    p.add_argument("--forget-split", help="built-in benchmark: forget a whole split (forget01/05/10)")
    p.add_argument("--retain-eval", type=int, default=200, help="retain records used to measure utility")
    add_fields_arg(p)


def add_fields_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fields", type=field_map, help="the data's column names, ours=theirs, e.g. "
                                                     "question=prompt,answer=completion (id, text, question, answer)")


def field_map(value: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in comma_list(value)]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected ours=theirs[,ours=theirs...], got {value!r}")
    return dict(pairs)  # type: ignore[arg-type]


def data_sources(args: argparse.Namespace) -> DataSources:
    return DataSources(args.requests, args.manifest, tuple(args.data or ()), args.holdout, args.forget_split,
                       args.retain_eval, args.fields)


def comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


class UI(Reporter):
    """``--json`` sends exactly one JSON document to stdout; tables and progress go to stderr then.
    Progress is a rich bar on a terminal and plain lines otherwise (logs, CI, pipes)."""

    def __init__(self, *, quiet: bool = False, as_json: bool = False) -> None:
        self.quiet, self.as_json = quiet, as_json
        self.stdout = sys.stdout
        self.out = Console(stderr=as_json, quiet=quiet, highlight=False)
        self.err = Console(stderr=True, highlight=False)
        for console in (self.out, self.err):
            if not console.is_terminal:
                console.width = 140  # logs and pipes: wide enough for a metrics table
        self._bar: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, tuple[float, int]] = {}

    def print(self, *objects: Any) -> None:
        self.out.print(*objects)

    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        t = Table(title=escape(title), title_justify="left")
        for c in columns:
            t.add_column(escape(c), overflow="fold")
        for r in rows:
            t.add_row(*(escape(fmt(v)) for v in r))
        self.out.print(t)

    def json(self, obj: Any) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
            self.stdout.flush()

    def note(self, message: str) -> None:
        self.out.print(escape(message))

    @contextlib.contextmanager
    def running(self) -> Iterator[UI]:
        """Progress bars live while the block runs (a terminal only)."""
        if self.quiet or not self.err.is_terminal:
            yield self
            return
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=self.err, transient=False)
        try:
            with self._bar:
                yield self
        finally:
            self._bar, self._tasks = None, {}

    def progress(self, task: str, completed: int, total: int | None = None, info: str = "") -> None:
        if self.quiet:
            return
        if self._bar is not None:
            if task not in self._tasks:
                self._tasks[task] = self._bar.add_task(escape(task), total=total, info="")
            self._bar.update(self._tasks[task], completed=completed, total=total, info=escape(info))
            return
        # plain lines: the first, every 10% (or 30 s), and the last
        now = time.monotonic()
        last_t, last_pct = self._last.get(task, (0.0, -1))
        pct = int(100 * completed / total) if total else -1
        if task in self._last and completed != total and now - last_t < 30 and (pct < 0 or pct // 10 == last_pct // 10):
            return
        self._last[task] = (now, pct)
        where = f"{completed}/{total}" if total else f"{completed}"
        self.err.print(escape(f"{task}: {where}" + (f" {info}" if info else "")), soft_wrap=True)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
