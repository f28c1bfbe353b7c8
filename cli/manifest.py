"""`unlearn manifest`: the training-data manifest a deletion request is validated against."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unlearn.cli.common import UI, add_fields_arg, sub_parser


def add_parser(sub: Any) -> None:
    m = sub_parser(sub, "manifest", "write the training-data manifest (id, source file, sha256 of the text) of "
                                    "data files")
    m.add_argument("data", nargs="+", help="training-data files (any format `--data` reads: JSONL, TOFU json, CSV, "
                                           "parquet); each record's source is its file's name")
    m.add_argument("--out", required=True, help="NEW manifest JSONL to write (never overwritten)")
    add_fields_arg(m)
    m.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.data import build_manifest, load_records, write_jsonl
    from unlearn.errors import InputError

    out = Path(args.out)
    if out.exists():
        raise InputError("exists: choose a new file (a manifest is never overwritten)", file=out)
    by_source = {Path(p).name: load_records(p, fields=args.fields) for p in args.data}
    if len(by_source) < len(args.data):
        raise InputError("two data files share a name: the manifest's source would be ambiguous", file=out)
    seen: dict[str, str] = {}
    for source, records in by_source.items():
        for r in records:
            if r.id in seen:
                raise InputError(f"record id '{r.id}' is in both {seen[r.id]} and {source}", file=source, field="id")
            seen[r.id] = source
    entries = build_manifest(by_source)
    write_jsonl(out, (asdict(e) for e in entries))
    ui.table(f"manifest -> {out}", ["source", "records"], [[s, len(r)] for s, r in by_source.items()])
    ui.json({"out": str(out), "records": len(entries), "sources": {s: len(r) for s, r in by_source.items()}})
    return 0
