"""`unlearn ledger verify | recover | show`: check, repair after a crash, and print the deletion ledger."""

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
    r = sub_parser(lsub, "recover", "finish or roll back an interrupted commit; remove dead runs' temporary "
                                    "directories beside the ledger")
    r.add_argument("ledger", help="ledger JSONL")
    r.set_defaults(run=run_recover)
    s = sub_parser(lsub, "show", "the entries, and the model-version chain of a request store's ledger")
    s.add_argument("ledger", help="ledger JSONL (a store's is STORE/ledger.jsonl)")
    s.set_defaults(run=run_show)


def run_show(args: argparse.Namespace, ui: UI) -> int:
    from pathlib import Path

    from unlearn.errors import InputError
    from unlearn.ledger import read_rows

    rows = read_rows(Path(args.ledger))
    bad = next((r for r in rows if r.problem is not None or r.entry is None), None)
    if bad is not None:
        raise InputError(f"unreadable ledger line ({bad.problem}); run `unlearn ledger verify`", file=args.ledger,
                         line=bad.line)
    table = []
    for r in rows:
        e = r.entry
        assert e is not None
        version = e.get("version")
        table.append([r.line, e.get("time", "?"), f"v{version}" if version else "-",
                      e["parent"][:12] if e.get("parent") else "-", e.get("strategy", "-"), e.get("method", "?"),
                      ", ".join(e.get("requests", {})) or "-", len(e.get("records", [])),
                      len(e.get("cumulative_records", [])) or "-", e.get("verdict", "-"), e.get("output", "?"),
                      e["entry_hash"][:12]])
    ui.table(f"{args.ledger}: {len(rows)} entries", ["line", "time", "version", "parent", "strategy", "method",
                                                     "requests", "records", "cumulative", "verdict", "output",
                                                     "entry"], table)
    ui.json({"ledger": args.ledger, "entries": [r.entry for r in rows]})
    return 0


def run_verify(args: argparse.Namespace, ui: UI) -> int:
    """Exit 0: verified; 1: tampered or inconsistent (each problem on stderr); 2: could not be read."""
    from unlearn.ledger import load_key, verify

    report = verify(args.ledger, check_models=not args.no_models, key=load_key())
    for p in report.problems:
        ui.err.print(f"{args.ledger}:{p.line}: {p.message}", markup=False, highlight=False)
    for note in report.notes:
        ui.print(f"[yellow]note:[/] {note}")
    what = "chain, MACs, anchors" + ("" if args.no_models else " and model hashes")
    ui.print(f"{args.ledger}: {report.entries} entries, " + (f"{what} verified" if report.ok else
                                                             f"{len(report.problems)} problem(s)"))
    ui.json({"ledger": args.ledger, "entries": report.entries, "ok": report.ok, "notes": report.notes,
             "problems": [p.__dict__ for p in report.problems]})
    return 0 if report.ok else 1


def run_recover(args: argparse.Namespace, ui: UI) -> int:
    from pathlib import Path

    from unlearn.errors import InputError
    from unlearn.ledger import load_key, locked, pending_journal, recover, sweep_stale

    path = Path(args.ledger)
    if not path.is_file() and not pending_journal(path).is_file():
        raise InputError("no ledger (and no interrupted commit) here; nothing to recover", file=path)
    with locked(path):
        done = recover(path, load_key())
        swept = sweep_stale(path.absolute().parent)
    ui.print(done or "no interrupted commit")
    for p in swept:
        ui.print(f"removed the temporary directory of a dead run: {p}")
    ui.json({"ledger": args.ledger, "recovered": done, "swept": [str(p) for p in swept]})
    return 0
