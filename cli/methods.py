"""`unlearn methods`: every registered unlearning method with its arguments, defaults and help."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from unlearn.cli.common import UI, sub_parser
from unlearn.jsonio import JsonObject


def add_parser(sub: Any) -> None:
    m = sub_parser(sub, "methods", "list the unlearning methods with their arguments, defaults and help")
    m.add_argument("name", nargs="?", help="one method (default: all, arguments of the first one shared by all)")
    m.set_defaults(run=run)


def describe(name: str) -> list[JsonObject]:
    """The rows of a method's arguments, from its dataclass (the one home of every default)."""
    from unlearn.methods import get_method

    rows = []
    for f in dataclasses.fields(get_method(name).args_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        rows.append({"argument": f.name, "default": default, "help": f.metadata.get("help", ""),
                     "choices": f.metadata.get("choices")})
    return rows


def run(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.methods import get_method
    from unlearn.unlearner import METHODS

    names = [args.name] if args.name else METHODS.names()
    out = {}
    for name in names:
        method = get_method(name)  # raises on an unknown name, listing the known ones
        rows = describe(name)
        out[name] = {"summary": method.summary, "arguments": rows}
        ui.table(f"{name}: {method.summary}", ["argument", "default", "help"],
                 [[r["argument"], r["default"], r["help"] + (f" ({'/'.join(r['choices'])})" if r["choices"] else "")]
                  for r in rows])
    ui.json(out)
    return 0
