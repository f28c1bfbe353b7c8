"""`unlearn ledger verify | recover | show | pubkey | receipt`: check, repair and print the deletion ledger."""

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
    v.add_argument("--pubkey", help="the operator's Ed25519 public key (hex or a file, from `ledger pubkey`): checks "
                                    "the signed head, so the whole chain, without the operator's secret")
    v.add_argument("--receipt", action="append", default=[], help="a requester's receipt (`ledger receipt`): fails "
                                                                  "when its entry is gone or the ledger went back")
    v.add_argument("--accept-unverified", action="store_true",
                   help="exit 0 on a consistent ledger checked with neither key (it could be a recomputed forgery)")
    v.set_defaults(run=run_verify)
    k = sub_parser(lsub, "pubkey", "print the operator's public key, for auditors and requesters")
    k.set_defaults(run=run_pubkey)
    c = sub_parser(lsub, "receipt", "a requester's receipt: an entry's hash and line and the signed head now")
    c.add_argument("ledger", help="ledger JSONL")
    c.add_argument("--entry", help="a prefix of the entry hash (default: the last entry)")
    c.add_argument("--out", required=True, help="NEW receipt file (JSON)")
    c.set_defaults(run=run_receipt)
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
    """Exit 0: verified; 1: tampered or inconsistent (each problem on stderr); 2: could not be read; 3: consistent
    but UNVERIFIED (neither the operator key nor the public key; 0 with --accept-unverified)."""
    from pathlib import Path

    from unlearn.errors import InputError
    from unlearn.jsonio import JSONProblem, read_json
    from unlearn.ledger import load_key, load_public_key, verify

    key = load_key()
    pubkey = load_public_key(args.pubkey) if args.pubkey else None
    receipts = []
    for name in args.receipt:
        try:
            receipts.append(read_json(Path(name)))
        except JSONProblem as exc:
            raise InputError(f"not a JSON receipt ({exc})", file=name) from None
    report = verify(args.ledger, check_models=not args.no_models, key=key, pubkey=pubkey, receipts=receipts)
    for p in report.problems:
        ui.err.print(f"{args.ledger}:{p.line}: {p.message}", markup=False, highlight=False)
    for note in report.notes:
        ui.print(f"[yellow]note:[/] {note}")
    what = ("chain" + (", MACs, signed head" if key is not None else ", signed head" if pubkey is not None else "")
            + (", receipts" if receipts else "")
            + ("" if args.no_models else " and model hashes"))
    ui.print(f"{args.ledger}: {report.entries} entries, " + (f"{what} verified" if report.ok else
                                                             f"{len(report.problems)} problem(s)"))
    ui.json({"ledger": args.ledger, "entries": report.entries, "ok": report.ok, "notes": report.notes,
             "unverified": report.unverified, "problems": [p.__dict__ for p in report.problems]})
    if not report.ok:
        return 1
    return 3 if report.unverified and not args.accept_unverified else 0


def run_pubkey(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.errors import InputError
    from unlearn.ledger import load_signing_key, public_key_hex, signing_key_file

    signer = load_signing_key()
    if signer is None:
        raise InputError("no signing key yet (made by the first commit)", file=signing_key_file())
    ui.print(public_key_hex(signer))
    ui.json({"pubkey": public_key_hex(signer)})
    return 0


def run_receipt(args: argparse.Namespace, ui: UI) -> int:
    import json
    from pathlib import Path

    from unlearn.errors import InputError
    from unlearn.fsutil import write_atomic
    from unlearn.ledger import receipt_of

    out = Path(args.out)
    if out.exists():
        raise InputError("exists (nothing is overwritten)", file=out)
    receipt = receipt_of(Path(args.ledger), args.entry)
    write_atomic(out, json.dumps(receipt, indent=2) + "\n")
    ui.print(f"receipt for entry {receipt['entry_hash'][:12]}... (line {receipt['line']}) -> {out}")
    ui.json(receipt)
    return 0


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
