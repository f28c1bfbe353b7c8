"""`unlearn requests add | list | run`: a queue of deletion requests answered by successive model versions."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from unlearn.cli.common import UI, add_fields_arg, benchmark_options, load_options, sub_parser
from unlearn.config import DEFAULT_METHOD
from unlearn.workflows.common import DataSources

STORE_HELP = "the store directory: queue, ledger and model versions (default unlearn-store)"


def add_parser(sub: Any) -> None:
    req = sub_parser(sub, "requests", "deletion requests over time: a queue answered by successive model versions")
    rsub = req.add_subparsers(dest="requests_command", required=True, metavar="ACTION")
    a = sub_parser(rsub, "add", "queue a deletion request (validated at once; creates the store on first use)")
    a.add_argument("file", help="deletion-request JSONL ({\"id\": ...} or {\"text\": ...} per line)")
    a.add_argument("--store", default="unlearn-store", help=STORE_HELP)
    a.add_argument("--name", help="the request's name (default req-NNNN)")
    a.add_argument("--model", help="new store: the original model (default: the built-in target)")
    a.add_argument("--manifest", help="new store: training-data manifest JSONL")
    a.add_argument("--data", nargs="+", help="new store: training-data JSONL file(s)")
    a.add_argument("--holdout", help="new store: non-member JSONL for the stopping rule and the verdicts")
    a.add_argument("--retain-model", help="new store: a model trained without any requested record (relative "
                                          "verdicts)")
    a.add_argument("--retain-eval", type=int, default=200, help="new store: retain records used for utility")
    add_fields_arg(a)
    a.set_defaults(run=run_add)
    ls = sub_parser(rsub, "list", "pending and answered requests, with the version that answered each")
    ls.add_argument("--store", default="unlearn-store", help=STORE_HELP)
    ls.set_defaults(run=run_list)
    r = sub_parser(rsub, "run", "answer the pending requests in one unlearning run: the next model version")
    r.add_argument("--store", default="unlearn-store", help=STORE_HELP)
    r.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"a registered method (unlearn methods); default {DEFAULT_METHOD}")
    r.add_argument("--config", help="method yaml, or the name of a shipped preset (configs/methods)")
    r.add_argument("--max-steps", type=int, help="override max_steps")
    r.add_argument("--lr", type=float, help="override lr")
    r.add_argument("--strategy", default="incremental", choices=("incremental", "original"),
                   help="incremental: unlearn the new requests from the latest version (default); original: "
                        "unlearn every request so far from the original weights")
    r.add_argument("--batch-max", type=int, help="answer at most this many pending requests")
    r.add_argument("--max-repairs", type=int, default=2,
                   help="rounds of unlearning again earlier requests that became detectable (then fail)")
    r.add_argument("--relearn-attack", action="store_true",
                   help="add the relearning attacks (three halves of the forget people) to the battery, and the "
                        "relearning probe to the stopping rule")
    r.set_defaults(run=run_run)


def run_add(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.workflows.requests import AddJob, add_requests

    given = DataSources(manifest=args.manifest, data=tuple(args.data or ()), holdout=args.holdout,
                        retain_eval=args.retain_eval, fields=args.fields)
    res = add_requests(AddJob(args.store, args.file, args.name, args.model, given, args.retain_model,
                              benchmark_options(args)), ui)
    if res.created:
        ui.print(f"created the store {args.store}")
    for what, ids in (("already answered", res.already_answered), ("already pending", res.already_pending)):
        if ids:
            ui.print(f"[yellow]{len(ids)} id(s) {what}, not queued again[/]")
    if res.request is not None:
        ui.print(f"queued {res.request.name}: {len(res.request.records)} record(s)")
    else:
        ui.print("nothing new to queue")
    ui.json({"store": args.store, "created": res.created, "request": res.request.name if res.request else None,
             "records": len(res.request.records) if res.request else 0,
             "already_answered": res.already_answered, "already_pending": res.already_pending})
    return 0


def run_list(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.store import Store

    store = Store(args.store)
    store.config()
    requests = store.requests()
    ui.table(f"requests in {args.store}", ["request", "added", "records", "status", "version", "verdict"],
             [[r.name, r.added, len(r.records), r.status, r.version if r.version is not None else "-",
               r.verdict or "-"] for r in requests])
    ui.json({"store": args.store, "requests": [r.__dict__ for r in requests]})
    return 0


def run_run(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.auditors.battery import BatteryArgs
    from unlearn.cli.forget import print_receipt
    from unlearn.workflows.requests import RunJob, run_requests

    overrides: dict[str, object] = {k: v for k, v in (("max_steps", args.max_steps), ("lr", args.lr)) if v is not None}
    if args.relearn_attack:
        overrides["relearn_probe"] = True
    res = run_requests(RunJob(args.store, args.method, args.config, overrides, args.strategy, args.batch_max,
                              args.max_repairs, BatteryArgs(relearn=args.relearn_attack), benchmark_options(args),
                              load_options(args)), ui)
    if res.receipt is not None and res.receipt.version is not None:
        print_receipt(ui, res.receipt)
        ui.table("every answered request under the new version (worst case over as-is and quantized)",
                 ["request", "verdict"], [[n, v] for n, v in res.receipt.version.request_verdicts.items()])
    ui.print(escape(res.message))
    ui.json({"version": res.version, "out": str(res.out) if res.out else None, "answered": res.answered,
             "entry_hash": res.entry_hash, "message": res.message,
             "receipt": res.receipt.to_dict() if res.receipt else {}})
    return 0
