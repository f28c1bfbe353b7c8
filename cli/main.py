"""`unlearn`: deletion requests, audits and comparisons for language models."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import unlearn  # noqa: F401  (sets the offline environment before transformers is imported)
from rich.text import Text

from cli.ui import UI
from unlearn.errors import UnlearnError

Command = Callable[[argparse.Namespace, UI], int]


def _cache(args: argparse.Namespace) -> Path | None:
    return Path(args.cache) if getattr(args, "cache", None) else None


def builtin_benchmark(args: argparse.Namespace, ui: UI) -> Any:
    """The built-in benchmark (built on first use, with a progress bar)."""
    from unlearn.benchmark.build import build

    with ui.progress() as prog:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, step: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = prog.add_task(f"training {name}", total=total, info="")
            prog.update(tasks[name], completed=step)

        return build(getattr(args, "preset", "default"), cache_dir=_cache(args),
                     force=getattr(args, "force", False), on_progress=on_progress)


def cmd_benchmark_build(args: argparse.Namespace, ui: UI) -> int:
    bench = builtin_benchmark(args, ui)
    report = bench.report
    split = report["config"]["retain_split"]
    rows = []
    for name, m in report["models"].items():
        em = m["exact_match"]
        rows.append([name, m["parameters"], m["train_records"], m["train_seconds"],
                     *em.values()])
    ems = next(iter(report["models"].values()))["exact_match"]
    ui.table(f"built-in benchmark: retain = target without {split}",
             ["model", "params", "train records", "train s", *(f"EM {k}" for k in ems)], rows)
    ui.print(f"target: {bench.target}\nretain: {bench.retain}\ndata:   {bench.root / 'data'}")
    ui.json({"root": str(bench.root), "target": str(bench.target), "retain": str(bench.retain), **report})
    return 0


BUILTIN = ("builtin:target", "builtin:retain")


def resolve_model(spec: str | None, args: argparse.Namespace, ui: UI) -> tuple[Path, Any]:
    """A model path, and the built-in benchmark when the spec is empty or ``builtin:*``."""
    if spec is None or spec in BUILTIN:
        bench = builtin_benchmark(args, ui)
        return (bench.retain if spec == "builtin:retain" else bench.target), bench
    return Path(spec), None


def new_out_dir(out: str | None, prefix: str) -> Path:
    import time

    path = Path(out) if out else Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists():
        raise UnlearnError(f"output directory already exists: {path} (choose a new --out; nothing is overwritten)")
    return path


def write_outputs(out: Path, files: dict[str, Callable[[Path], Any]]) -> None:
    """Write result files into a temp sibling and rename it into place: no half-written results."""
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, writer in files.items():
            writer(tmp / name)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cmd_audit(args: argparse.Namespace, ui: UI) -> int:
    import json

    from attacks.runner import parse_scores
    from auditors.audit import AuditArgs, audit
    from auditors.plots import plot_audit
    from unlearn.data import load_records
    from unlearn.model import check_same_tokenizer, load_model

    model_path, bench = resolve_model(args.model, args, ui)
    if bench is None and (args.members is None or args.nonmembers is None):
        raise UnlearnError("--members and --nonmembers are required unless auditing the built-in benchmark")
    members = load_records(args.members) if args.members else bench.split(bench.retain_split)
    nonmembers = load_records(args.nonmembers) if args.nonmembers else bench.split("holdout")
    audit_args = AuditArgs(scores=tuple(parse_scores(args.scores)), k=args.k, alpha=args.alpha,
                           batch_size=args.batch_size, seed=args.seed)
    out = new_out_dir(args.out, "audit")
    model, tok = load_model(model_path)
    reference = None
    if args.reference:
        reference, ref_tok = load_model(args.reference)
        check_same_tokenizer(tok, ref_tok, str(model_path), args.reference)
    retain_path = args.retain or (str(bench.retain) if bench is not None and args.members is None else None)
    retain = None
    if retain_path:
        retain, retain_tok = load_model(retain_path)
        check_same_tokenizer(tok, retain_tok, str(model_path), retain_path)
    tofu = retain is not None and all(r.is_qa and r.perturbed_answers for r in members)
    with ui.progress() as prog:
        n_models = 1 + (retain is not None)
        task = prog.add_task("scoring", total=(len(members) + len(nonmembers)) * n_models, info="")
        report = audit(model, tok, members, nonmembers, audit_args, reference=reference, retain_model=retain,
                       tofu=tofu, on_batch=lambda n: prog.advance(task, n))
    rows = [[r.score, r.auc, f"[{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]", r.tpr_at_1pct_fpr, r.tpr_at_01pct_fpr,
             r.p_holm, r.privleak, "DETECTED" if r.detected else "not detected"] for r in report.results]
    ui.table(f"audit of {model_path}: {len(members)} members vs {len(nonmembers)} non-members",
             ["score", "AUC", "95% CI", "TPR@1%FPR", "TPR@0.1%FPR", "p (Holm)", "privleak %", "verdict"], rows)
    if report.forget_quality is not None:
        ui.print(f"forget quality (KS p of truth ratios vs retain model): {report.forget_quality:.3g}")
    ui.print(("[bold red]" if report.detected else "[bold green]") + report.verdict + "[/]")
    for w in report.warnings:
        ui.print(f"[yellow]warning:[/] {w}")
    ui.print(f"[dim]{report.caveat}[/]")
    payload = {"model": str(model_path), "reference": args.reference, "retain": retain_path,
               "args": {**audit_args.__dict__, "scores": list(audit_args.scores)}, **report.to_dict()}
    payload["attacks"] = run_attacks(args, ui, model, tok, members, nonmembers)
    write_outputs(out, {"audit.json": lambda p: p.write_text(json.dumps(payload, indent=2)),
                        "audit.png": lambda p: plot_audit(report, p, title=str(model_path))})
    ui.print(f"report: {out / 'audit.json'}  plot: {out / 'audit.png'}")
    ui.json({**payload, "out": str(out)})
    return 1 if (args.fail_if_detected and report.detected) else 0


def run_attacks(args: argparse.Namespace, ui: UI, model: Any, tok: Any, members: Any, nonmembers: Any) -> dict:
    """``--attacks relearn,extract``: robustness figures printed as tables and returned for the JSON."""
    from auditors.robustness import extraction, relearn_report
    from unlearn.data import load_records

    wanted = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = sorted(set(wanted) - {"relearn", "extract"})
    if unknown:
        raise UnlearnError(f"unknown attack(s) {', '.join(unknown)}; known: relearn, extract")
    out: dict[str, Any] = {}
    if "extract" in wanted:
        out["extract"] = {"members": extraction(model, tok, members), "nonmembers": extraction(model, tok, nonmembers)}
        ui.table("extraction (greedy completion of the prompts)", ["set", "exact match", "extraction strength",
                                                                  "token accuracy"],
                 [[k, *v.values()] for k, v in out["extract"].items()])
    if "relearn" in wanted:
        relearn_set = load_records(args.relearn_set) if args.relearn_set else None
        r = relearn_report(model, tok, members, nonmembers, relearn_set, steps=args.relearn_steps,
                           lr=args.relearn_lr, seed=args.seed)
        out["relearn"] = r
        ui.table(f"relearning attack: {r['steps']} steps (lr {r['lr']}) on {r['relearn_records']} records, "
                 f"measured on {r['evaluated_records']} other members",
                 ["", "exact match", "extraction strength", "LOSS AUC vs non-members", "mean answer prob"],
                 [[k, r[k]["exact_match"], r[k]["extraction_strength"], r[k]["loss_auc"], r[k]["mean_prob"]]
                  for k in ("before", "after")])
    return out


def cmd_info(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.model import model_info

    info = model_info(args.model)
    ui.table(f"model {args.model}", ["field", "value"], [[k, v] for k, v in asdict(info).items()])
    ui.json(asdict(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout (tables to stderr)")
    common.add_argument("--quiet", action="store_true", help="no tables or progress bars")
    common.add_argument("--cache", help="cache directory for the built-in benchmark (default ~/.cache/unlearn "
                                        "or $UNLEARN_CACHE)")
    common.add_argument("--preset", default="default",
                        help="built-in benchmark preset used when no model/data is given: default or tiny")

    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("benchmark", help="the built-in benchmark of fictitious people", parents=[common])
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    b = bsub.add_parser("build", help="build (or reuse) the built-in target and retain models", parents=[common])
    b.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    b.set_defaults(func=cmd_benchmark_build)

    a = sub.add_parser("audit", help="is a record set still detectable in a model? (membership inference)",
                       parents=[common])
    a.add_argument("--model", help="model directory, or builtin:target / builtin:retain (default: built-in target)")
    a.add_argument("--members", help="JSONL of records to test (default: the built-in forget split)")
    a.add_argument("--nonmembers", help="JSONL of comparable records never trained on (default: built-in holdout)")
    a.add_argument("--reference", help="reference model directory (same tokenizer) for the 'reference' score")
    a.add_argument("--retain", help="model retrained without the members: adds privleak and forget quality")
    a.add_argument("--scores", default="loss,zlib,mink,minkpp",
                   help="comma list of loss,zlib,mink,minkpp,reference,gradnorm")
    a.add_argument("--k", type=float, default=0.4, help="fraction of lowest tokens for Min-K%% and Min-K%%++")
    a.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdict")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--fail-if-detected", action="store_true", help="exit 1 when the members are still detectable")
    a.add_argument("--attacks", default="", help="comma list of extra attacks: relearn, extract")
    a.add_argument("--relearn-set", help="JSONL to relearn on (default: half the members' groups; the rest "
                                         "is measured)")
    a.add_argument("--relearn-steps", type=int, default=20)
    a.add_argument("--relearn-lr", type=float, default=3e-4)
    a.add_argument("--out", help="new directory for audit.json and audit.png (default runs/audit-TIME)")
    a.set_defaults(func=cmd_audit)

    from cli.forget import add_parsers as add_forget_parsers

    add_forget_parsers(sub, common)
    from cli.compare import add_parser as add_compare_parser

    add_compare_parser(sub, common)
    from cli.attribute import add_parser as add_attribute_parser

    add_attribute_parser(sub, common)
    from cli.adversarial import add_parser as add_worst_case_parser

    add_worst_case_parser(sub, common)

    i = sub.add_parser("info", help="parameters, layers, tokenizer and dtype of a model", parents=[common])
    i.add_argument("model", help="local model directory")
    i.set_defaults(func=cmd_info)
    return parser


def relaunch(argv: Sequence[str], config: str) -> int:
    """Run the same command under ``accelerate launch --config_file config`` (one process per device)."""
    import os
    import subprocess

    from unlearn.errors import InputError

    if not Path(config).is_file():
        raise InputError("accelerate config not found", file=config)
    rest, skip = [], False
    for a in argv:
        if skip or a.startswith("--accelerate-config="):
            skip = False
            continue
        if a == "--accelerate-config":
            skip = True
            continue
        rest.append(a)
    env = {**os.environ, "UNLEARN_LAUNCHED": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    import torch

    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "-m", "cli.main", *rest]
    return subprocess.call(cmd, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    ui = UI(quiet=args.quiet or rank > 0, as_json=args.json and rank == 0)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        if getattr(args, "accelerate_config", None) and not os.environ.get("UNLEARN_LAUNCHED"):
            return relaunch(argv, args.accelerate_config)
        with redirect:  # with --json, stdout carries the JSON document alone (libraries print to stdout)
            return int(args.func(args, ui))
    except UnlearnError as exc:
        ui.err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        ui.err.print("interrupted: nothing was written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
