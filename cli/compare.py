"""`unlearn compare`: several unlearning methods on one forget set, side by side."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from cli.ui import UI
from unlearn.errors import InputError

DEFAULT_METHODS = ["grad_ascent", "graddiff", "npo", "simnpo", "newton", "iau", "soul"]
COLUMNS = [("label", "method"), ("auc_loss", "AUC loss"), ("auc_zlib", "AUC zlib"), ("auc_mink", "AUC Min-K"),
           ("auc_minkpp", "AUC Min-K++"), ("privleak_loss", "privleak %"), ("forget_quality", "forget quality"),
           ("model_utility", "utility"), ("retain_prob", "retain prob"), ("wall_seconds", "wall s"),
           ("peak_memory_mb", "peak MiB"), ("steps", "steps"), ("stop_reason", "stopped")]


def _load_config(path: str | None) -> dict[str, Any]:
    import yaml

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputError("compare config not found", file=path)
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"invalid yaml ({str(exc).splitlines()[0]})", file=path) from None
    known = {"preset", "forget_split", "seed", "common", "methods"}
    if not isinstance(cfg, dict) or set(cfg) - known:
        extra = sorted(set(cfg) - known) if isinstance(cfg, dict) else ["(not a mapping)"]
        raise InputError(f"unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}", file=path)
    return cfg


def cmd_compare(args: argparse.Namespace, ui: UI) -> int:
    from auditors.compare import Sets, evaluate, open_unlearning_files, parse_specs, reference_of, run_compare
    from auditors.plots import plot_compare
    from cli.forget import gather
    from cli.main import new_out_dir, resolve_model, write_outputs
    from unlearn.model import check_same_tokenizer, load_model

    cfg = _load_config(args.config)
    if "preset" in cfg and args.preset == "default":
        args.preset = cfg["preset"]
    methods = args.methods.split(",") if args.methods else cfg.get("methods", DEFAULT_METHODS)
    specs = parse_specs(methods, args.config or "--methods")
    common = dict(cfg.get("common") or {})
    if args.max_steps is not None:
        common["max_steps"] = args.max_steps
    seed = args.seed if args.seed is not None else int(cfg.get("seed", 0))
    model_path, bench = resolve_model(args.model, args, ui)
    if bench is not None and not args.requests:
        args.forget_split = args.forget_split or cfg.get("forget_split", bench.retain_split)
    data = gather(args, bench)
    utility = bench.split("utility")[:200] if bench is not None else []
    sets = Sets(data["forget"], data["holdout"], data["retain"], data["retain_eval"], utility)
    out = new_out_dir(args.out, "compare")
    retain_path = args.retain_model or (str(bench.retain) if bench is not None and args.forget_split ==
                                        bench.retain_split else None)
    ui.print(f"comparing {', '.join(s.label for s in specs)} on {data['label']}: {len(sets.forget)} forget, "
             f"{len(sets.retain)} retain, {len(sets.holdout)} holdout records; seed {seed}")
    rows: list[dict[str, Any]] = []
    reference = None
    with ui.progress() as prog:
        task = prog.add_task("reference models", total=len(specs) + 2, info="")
        target, tok = load_model(model_path)
        if retain_path:
            retain_model, retain_tok = load_model(retain_path)
            check_same_tokenizer(tok, retain_tok, str(model_path), retain_path)
            reference = reference_of(retain_model, tok, sets)
            rows.append({"label": "retain", "method": "retrain", **evaluate(retain_model, tok, sets, reference)[0]})
            del retain_model
        metrics, per_record = evaluate(target, tok, sets, reference)
        rows.append({"label": "target", "method": "none", **metrics, "_per_record": per_record})
        del target
        prog.update(task, advance=2)
        step_task = prog.add_task("", total=None, info="")

        def on_method(label: str) -> None:
            prog.update(task, advance=0 if label == specs[0].label else 1, description=f"method {label}")
            prog.reset(step_task, description=f"  steps ({label})")

        def on_step(step: int, total: int, stats: dict[str, Any]) -> None:
            prog.update(step_task, completed=step, total=total,
                        info=" ".join(f"{k}={v:.3g}" for k, v in stats.items()))

        rows += run_compare(lambda: load_model(model_path), sets, specs, reference=reference, seed=seed,
                            common=common, on_method=on_method, on_step=on_step)
        prog.update(task, completed=len(specs) + 2)
    present = [(k, name) for k, name in COLUMNS if any(k in r for r in rows)]
    ui.table(f"compare on {data['label']} (AUC: forget vs holdout, 0.5 = undetectable; privleak vs retain model)",
             [name for _, name in present], [[r.get(k) for k, _ in present] for r in rows])
    ui.print("[dim]AUCs are per record; p-values and exchangeability caveats: see `unlearn audit`.[/]")
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    payload = {"model": str(model_path), "retain_model": retain_path, "forget": data["label"], "seed": seed,
               "common": common, "rows": public}

    def write_csv(p: Path) -> None:
        keys = [k for k, _ in COLUMNS] + sorted({k for r in public for k in r} - {k for k, _ in COLUMNS} - {"args"})
        with p.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(public)

    files = {"compare.json": lambda p: p.write_text(json.dumps(payload, indent=2, default=str)),
             "compare.csv": write_csv,
             "compare.png": lambda p: plot_compare(public, p, title=f"{data['label']}")}
    for r in rows:
        files[r["label"]] = lambda p, r=r: open_unlearning_files(r, p)
    from unlearn.distributed import is_main_process

    if not is_main_process():
        return 0
    write_outputs(out, files)
    ui.print(f"results: {out / 'compare.json'}, {out / 'compare.csv'}, plot {out / 'compare.png'}, "
             f"open-unlearning files in {out}/<method>/")
    ui.json({**payload, "out": str(out)})
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("compare", help="run several unlearning methods on one forget set and compare them",
                       parents=[common])
    c.add_argument("--config", help="compare yaml (configs/compare/*.yaml): methods, common args, split, seed")
    c.add_argument("--methods", help=f"comma list of methods (default: {','.join(DEFAULT_METHODS)})")
    c.add_argument("--model", help="input model directory (never modified); default: the built-in target")
    c.add_argument("--retain-model", help="model retrained without the forget set (privleak, forget quality)")
    c.add_argument("--requests", help="deletion-request JSONL naming the forget set")
    c.add_argument("--manifest", help="training-data manifest JSONL")
    c.add_argument("--data", nargs="+", help="training-data JSONL file(s)")
    c.add_argument("--holdout", help="non-member JSONL")
    c.add_argument("--forget-split", help="built-in benchmark split to forget (default forget10)")
    c.add_argument("--max-steps", type=int, help="override max_steps of every method")
    c.add_argument("--seed", type=int, help="seed for every method (default 0)")
    c.add_argument("--retain-eval", type=int, default=200, help="retain records used to measure utility")
    c.add_argument("--out", help="NEW output directory (default runs/compare-TIME)")
    c.add_argument("--accelerate-config", help="launch through `accelerate launch` with this config "
                                               "(configs/accelerate/*.yaml)")
    c.set_defaults(func=cmd_compare)
