"""`unlearn attribute`: rank training datasets by their influence on a test set (UnTrac)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cli.ui import UI


def cmd_attribute(args: argparse.Namespace, ui: UI) -> int:
    from cli.main import new_out_dir, write_outputs
    from unlearn.attribution import UnTracArgs, attribute
    from unlearn.data import load_records
    from unlearn.errors import InputError
    from unlearn.model import load_model

    names = [Path(p).stem for p in args.train]
    if len(set(names)) != len(names):
        raise InputError("training files must have distinct names (the name is the dataset label)",
                         file=args.train[0])
    sources = {n: load_records(p) for n, p in zip(names, args.train, strict=True)}
    test = load_records(args.test)
    uargs = UnTracArgs(**{k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                                            ("seed", args.seed), ("scope", args.scope)) if v is not None})
    out = new_out_dir(args.out, "attribute")
    model, tok = load_model(args.model)
    with ui.progress() as prog:
        task = prog.add_task(f"{args.method}", total=len(sources), info="")
        scores = attribute(model, tok, sources, test, args.method, uargs,
                           on_progress=lambda name: prog.update(task, advance=1, info=name))
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    rows = [[name, score, rank] for rank, (name, score) in enumerate(ranked, 1)]
    ui.table(f"{args.method}: influence of each training set on {args.test} (higher = helped more)",
             ["dataset", "score", "rank"], rows)
    payload = {"model": args.model, "test": args.test, "method": args.method, "args": uargs.to_dict(),
               "datasets": dict(zip(names, args.train, strict=True)),
               "ranking": [{"dataset": n, "score": s, "rank": r} for n, s, r in rows]}
    write_outputs(out, {"attribution.json": lambda p: p.write_text(json.dumps(payload, indent=2))})
    ui.print(f"results: {out / 'attribution.json'}")
    ui.json({**payload, "out": str(out)})
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser("attribute", help="which training dataset caused this behaviour? (UnTrac)", parents=[common])
    a.add_argument("--model", required=True, help="trained model directory (never modified)")
    a.add_argument("--train", nargs="+", required=True, help="candidate training datasets (JSONL), one per file")
    a.add_argument("--test", required=True, help="JSONL of the behaviour to explain")
    a.add_argument("--method", default="untrac", choices=["untrac", "untrac-inv", "tracin"])
    a.add_argument("--steps", type=int, help="gradient-ascent steps T (default 50)")
    a.add_argument("--lr", type=float, help="ascent learning rate (default 5e-5)")
    a.add_argument("--batch-size", type=int, help="ascent batch size (default 1 for untrac)")
    a.add_argument("--scope", help="parameters to ascend: all, last:N, regex:PATTERN")
    a.add_argument("--seed", type=int)
    a.add_argument("--out", help="NEW output directory (default runs/attribute-TIME)")
    a.set_defaults(func=cmd_attribute)
