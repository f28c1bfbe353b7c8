"""`unlearn ledger verify`: check the deletion ledger's hash chain and the recorded model hashes."""

from __future__ import annotations

import argparse
from typing import Any

from unlearn.cli.common import UI, sub_parser


def add_parser(sub: Any) -> None:
    led = sub_parser(sub, "ledger", "the deletion ledger")
    lsub = led.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    v = sub_parser(lsub, "verify", "check the hash chain and the recorded model hashes")
    v.add_argument("ledger", help="ledger JSONL")
    v.add_argument("--no-models", action="store_true", help="check the chain only, not the model files")
    v.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.ledger import verify

    n, problems = verify(args.ledger, check_models=not args.no_models)
    for p in problems:
        ui.err.print(f"{args.ledger}:{p.line}: {p.message}", markup=False, highlight=False)
    ok = not problems
    ui.print(f"{args.ledger}: {n} entries, " + ("chain and model hashes verified" if ok else
                                                  f"{len(problems)} problem(s)"))
    ui.json({"ledger": args.ledger, "entries": n, "ok": ok, "problems": [p.__dict__ for p in problems]})
    return 0 if ok else 1
