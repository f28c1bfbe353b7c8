"""Console output shared by every subcommand: rich tables, progress bars, --json, --quiet."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class UI:
    """``--json`` sends exactly one JSON document to stdout; tables and bars go to stderr then."""

    def __init__(self, *, quiet: bool = False, as_json: bool = False) -> None:
        self.quiet, self.as_json = quiet, as_json
        self.stdout = sys.stdout
        self.out = Console(stderr=as_json, quiet=quiet, highlight=False)
        self.err = Console(stderr=True, highlight=False)
        for console in (self.out, self.err):
            if not console.is_terminal:
                console.width = 140  # logs and pipes: wide enough for a metrics table

    def print(self, *objects: Any) -> None:
        self.out.print(*objects)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(fmt(v) for v in r))
        self.out.print(t)

    def json(self, obj: Any) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
            self.stdout.flush()

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.err,
                        disable=self.quiet, transient=False)
        with prog:
            yield prog


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
