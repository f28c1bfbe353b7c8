"""`unlearn forget`: validate a deletion request, unlearn, write the new model, receipt and ledger entry."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli.ui import UI
from unlearn.data import DeletionRequest, Record, load_manifest, load_records, load_requests
from unlearn.errors import InputError, UnlearnError

RECEIPT = "unlearn_receipt.json"


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) until the block ends, so a commit is all-or-nothing."""
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, f: caught.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if caught:
            raise KeyboardInterrupt


def _builtin_request(bench: Any, split: str | None) -> tuple[list[Record], str]:
    """The built-in default request: one person of the forget split (or the whole --forget-split)."""
    if split:
        return bench.split(split), f"built-in split {split}"
    first = bench.split("forget01")
    person = first[0].meta["person"]
    return [r for r in first if r.meta.get("person") == person], f"built-in person {person}"


def gather(args: argparse.Namespace, bench: Any) -> dict[str, Any]:
    """Requests, forget / retain / holdout records, validated."""
    if bench is None:
        missing = [f"--{n}" for n in ("requests", "manifest", "data", "holdout") if not getattr(args, n)]
        if missing:
            raise UnlearnError(f"{', '.join(missing)} required for a model that is not the built-in benchmark")
    manifest = load_manifest(args.manifest or bench.manifest)
    data = [r for path in (args.data or [bench.split_path("train")]) for r in load_records(path)]
    by_id = {r.id: r for r in data}
    request: DeletionRequest | None = None
    if args.requests:
        request = load_requests(args.requests, manifest)
        absent = [i for i in request.ids if i not in by_id]
        if absent:
            raise InputError(f"requested ids are in the manifest but not in the training data: "
                             f"{', '.join(absent[:10])}", file=args.requests)
        forget = [by_id[i] for i in request.ids]
        label = f"{len(forget)} record(s) from {args.requests}"
    else:
        forget, label = _builtin_request(bench, args.forget_split)
    forget_ids = {r.id for r in forget}
    retain = [r for r in data if r.id not in forget_ids]
    holdout = load_records(args.holdout) if args.holdout else bench.split("holdout")
    clash = forget_ids & {r.id for r in holdout}
    if clash:
        raise InputError(f"holdout contains requested record '{sorted(clash)[0]}': holdout must be non-members",
                         file=args.holdout or "holdout")
    rng = random.Random(0)
    retain_eval = rng.sample(retain, min(len(retain), args.retain_eval))
    return {"request": request, "forget": forget, "retain": retain, "holdout": holdout,
            "retain_eval": retain_eval, "label": label}


def cmd_forget(args: argparse.Namespace, ui: UI) -> int:
    from auditors.metrics import privleak
    from auditors.stopping import forget_check, make_monitor
    from cli.main import new_out_dir, resolve_model
    from unlearn import ledger
    from unlearn.methods import get_method, load_method_args
    from unlearn.model import load_model, model_hash, save_model

    model_path, bench = resolve_model(args.model, args, ui)
    sets = gather(args, bench)
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("lr", args.lr), ("seed", args.seed)) if v is not None}
    margs = load_method_args(args.method, args.config, overrides)
    method = get_method(args.method)
    out = new_out_dir(args.out, f"forget-{args.method}")
    ledger_path = Path(args.ledger) if args.ledger else out.parent / "unlearn-ledger.jsonl"
    ledger.last_hash(ledger_path)  # a damaged ledger fails now, before any work
    before_hash = model_hash(model_path)
    model, tok = load_model(model_path)
    forget, retain, holdout, retain_eval = sets["forget"], sets["retain"], sets["holdout"], sets["retain_eval"]
    ui.print(f"forgetting {sets['label']}: {len(forget)} records, retain {len(retain)}, holdout {len(holdout)}; "
             f"method {args.method}")
    before = forget_check(model, tok, forget, holdout, retain_eval)
    monitor = make_monitor(tok, forget, holdout, retain_eval, margs) if margs.eval_every else None
    with ui.progress() as prog:
        task = prog.add_task(f"unlearning ({args.method})", total=margs.max_steps, info="")

        def on_step(step: int, total: int, stats: dict[str, Any]) -> None:
            prog.update(task, completed=step, info=" ".join(f"{k}={v:.3g}" for k, v in stats.items()))

        result = method.run(model, tok, forget, retain, margs, monitor=monitor, on_step=on_step)
    after = forget_check(result.model, tok, forget, holdout, retain_eval)
    receipt: dict[str, Any] = {
        "request": {"file": args.requests, "ids": [r.id for r in forget],
                    "duplicates_folded": sets["request"].duplicates_folded if sets["request"] else 0},
        "model_in": str(model_path), "model_in_sha256": before_hash, "out": str(out),
        "method": args.method, "config": margs.to_dict(), "steps": result.steps,
        "stop_reason": result.stop_reason, "stop_message": result.stop_message,
        "wall_seconds": round(result.wall_seconds, 3), "peak_memory_mb": round(result.peak_memory_mb, 1),
        "before": before, "after": after, "history": result.history, "method_stats": result.stats,
        "retain_utility_relative": after.get("retain_prob", 0) / max(before.get("retain_prob", 1e-12), 1e-12),
    }
    if bench is not None and args.forget_split == bench.retain_split:
        retain_model, _ = load_model(bench.retain)
        gold = forget_check(retain_model, tok, forget, holdout, retain_eval)
        receipt["privleak_vs_retain"] = privleak(after["forget_auc"], gold["forget_auc"])
    from unlearn.distributed import is_main_process

    if not is_main_process():  # every process unlearned its shard; the first one commits the result
        return 0
    with deferred_interrupts():
        manifest = save_model(result.model, tok, out, input_dir=model_path,
                              extra_files={RECEIPT: json.dumps(receipt, indent=2)})
        entry = ledger.make_entry(ledger_path, request_file=args.requests or "", records=forget, method=args.method,
                                  config=margs.to_dict(), model_before=before_hash,
                                  model_after=manifest["weights_sha256"], output=str(out),
                                  stop_reason=result.stop_reason)
        ledger.append(ledger_path, entry)
    receipt["ledger"] = {"path": str(ledger_path), "entry_hash": entry["entry_hash"]}
    print_receipt(ui, receipt)
    ui.json(receipt)
    return 0


def print_receipt(ui: UI, r: dict[str, Any]) -> None:
    b, a = r["before"], r["after"]
    rows = [["forget vs holdout LOSS AUC", b["forget_auc"], a["forget_auc"]],
            ["one-sided Mann-Whitney p", b["forget_p"], a["forget_p"]],
            ["forget mean NLL", b["forget_nll"], a["forget_nll"]],
            ["retain utility (mean answer prob)", b.get("retain_prob"), a.get("retain_prob")]]
    ui.table(f"receipt: {len(r['request']['ids'])} record(s) removed with {r['method']} -> {r['out']}",
             ["audit", "before", "after"], rows)
    extra = f", privleak vs retain {r['privleak_vs_retain']:.1f}%" if "privleak_vs_retain" in r else ""
    ui.print(f"steps {r['steps']} ({r['stop_reason']}: {r['stop_message']}); wall {r['wall_seconds']:.1f} s; "
             f"peak memory {r['peak_memory_mb']:.0f} MiB; retain utility x{r['retain_utility_relative']:.3f}{extra}")
    if r["stop_reason"] == "utility_drop":
        ui.print(f"[yellow]warning:[/] {r['stop_message']}")
    ui.print(f"ledger: {r['ledger']['path']} (entry {r['ledger']['entry_hash'][:16]}...)")


def cmd_ledger_verify(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.ledger import verify

    n, problems = verify(args.ledger, check_models=not args.no_models)
    for p in problems:
        ui.err.print(f"{args.ledger}:{p.line}: {p.message}", markup=False, highlight=False)
    ok = not problems
    ui.print(f"{args.ledger}: {n} entries, " + ("chain and model hashes verified" if ok else
                                                  f"{len(problems)} problem(s)"))
    ui.json({"ledger": args.ledger, "entries": n, "ok": ok, "problems": [p.__dict__ for p in problems]})
    return 0 if ok else 1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    f = sub.add_parser("forget", help="apply a deletion request: unlearn records, write a new model + receipt",
                       parents=[common])
    f.add_argument("--model", help="input model directory (never modified); default: the built-in target")
    f.add_argument("--requests", help="deletion-request JSONL ({\"id\": ...} or {\"text\": ...} per line); "
                                      "default with the built-in model: one built-in person")
    f.add_argument("--manifest", help="training-data manifest JSONL (id, source, sha256)")
    f.add_argument("--data", nargs="+", help="training-data JSONL file(s) holding the records")
    f.add_argument("--holdout", help="non-member JSONL for the stopping rule and the before/after audit")
    f.add_argument("--forget-split", help="built-in benchmark: forget a whole split (forget01/05/10)")
    f.add_argument("--method", default="npo", help="grad_ascent, graddiff, npo, simnpo, newton, iau, soul")
    f.add_argument("--config", help="yaml of method arguments (unknown keys are an error)")
    f.add_argument("--max-steps", type=int, help="override max_steps")
    f.add_argument("--lr", type=float, help="override lr")
    f.add_argument("--seed", type=int, help="override seed")
    f.add_argument("--retain-eval", type=int, default=200, help="retain records used to measure utility")
    f.add_argument("--out", help="NEW output directory (default runs/forget-METHOD-TIME)")
    f.add_argument("--ledger", help="ledger JSONL to append to (default: unlearn-ledger.jsonl beside --out)")
    f.add_argument("--accelerate-config", help="launch through `accelerate launch` with this config "
                                               "(configs/accelerate/*.yaml: DDP, DeepSpeed ZeRO-2/3, FSDP)")
    f.set_defaults(func=cmd_forget)

    led = sub.add_parser("ledger", help="the deletion ledger", parents=[common])
    lsub = led.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    v = lsub.add_parser("verify", help="check the hash chain and the recorded model hashes", parents=[common])
    v.add_argument("ledger", help="ledger JSONL")
    v.add_argument("--no-models", action="store_true", help="check the chain only, not the model files")
    v.set_defaults(func=cmd_ledger_verify)
