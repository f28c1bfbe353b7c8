"""`unlearn forget`: apply a deletion request and print its receipt."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from unlearn.cli.common import UI, add_data_args, benchmark_options, data_sources, load_options, sub_parser
from unlearn.config import DEFAULT_METHOD
from unlearn.jsonio import JsonObject
from unlearn.receipt import Receipt
from unlearn.workflows.forget import ForgetJob, forget, resolve_method_args


def add_parser(sub: Any) -> None:
    f = sub_parser(sub, "forget", "apply a deletion request: unlearn records, write a new model + receipt")
    f.add_argument("--model", help="input model directory (never modified); default: the built-in target")
    add_data_args(f)
    f.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"a registered method (unlearn methods); default {DEFAULT_METHOD}")
    f.add_argument("--config", help="method yaml, or the name of a shipped preset (configs/methods)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_args",
                   help="override any method argument (repeatable; VALUE read as yaml, validated like the config "
                        "file; `unlearn methods NAME` lists them)")
    f.add_argument("--max-steps", type=int, help="override max_steps")
    f.add_argument("--lr", type=float, help="override lr")
    f.add_argument("--seed", type=int, help="override seed")
    f.add_argument("--scope", help="override scope: all, last:N, regex:PATTERN, or lora (unlearn into a LoRA adapter: "
                                   "the base stays untouched and the output is the adapter)")
    f.add_argument("--adapter", help="a LoRA adapter directory on --model (with --scope lora its own parameters are "
                                     "unlearned)")
    f.add_argument("--merge", action="store_true", help="with a LoRA adapter: write the merged model")
    f.add_argument("--out", help="NEW output directory (default runs/forget-METHOD-TIME)")
    f.add_argument("--ledger", help="ledger JSONL to append to (default: unlearn-ledger.jsonl beside --out)")
    f.add_argument("--retain-model", help="a model trained without the forget set: the verdict becomes relative to "
                                          "it (default with the built-in model: its retain model, when it applies)")
    f.add_argument("--relearn-attack", action="store_true",
                   help="add the relearning attacks (three, each on another half of the forget people) to the "
                        "receipt's battery, and the relearning probe to the stopping rule (it stops only on what "
                        "stays REMOVED after relearning; --set relearn_probe=false: not)")
    f.add_argument("--full-battery", action="store_true",
                   help="score every record under every attack, even after a first look or an attack has found the "
                        "forget set NOT REMOVED")
    f.add_argument("--margin", type=float, default=None,
                   help="equivalence margin in AUC: REMOVED means every score and attack within +-margin of the "
                        "retain model (or chance); default: what two never-trained models differ by on sets of this "
                        "size, at most 0.10 for 10 or more people")
    f.add_argument("--copy-unchanged", action="store_true",
                   help="write the weights even when the request needs no change (default: a receipt only)")
    f.add_argument("--dry-run", action="store_true", help="print the resolved method configuration and stop")
    f.add_argument("--accelerate-config", help="launch through `accelerate launch` with this config (a file, or a "
                                               "shipped name from configs/accelerate: DDP, DeepSpeed ZeRO-2/3, FSDP)")
    f.set_defaults(run=run)


def job_of(args: argparse.Namespace) -> ForgetJob:
    overrides = {**set_overrides(args.set_args),
                 **{k: v for k, v in (("max_steps", args.max_steps), ("lr", args.lr), ("seed", args.seed),
                                      ("scope", args.scope), ("margin", args.margin)) if v is not None}}
    if args.relearn_attack:
        overrides.setdefault("relearn_probe", True)
    from unlearn.auditors.battery import BatteryArgs

    battery = BatteryArgs(relearn=args.relearn_attack, margin=args.margin,
                          exhaustive=args.full_battery)
    return ForgetJob(model=args.model, data=data_sources(args), method=args.method, config=args.config,
                     overrides=overrides, out=args.out, ledger=args.ledger, retain_model=args.retain_model,
                     battery=battery, copy_unchanged=args.copy_unchanged, benchmark=benchmark_options(args),
                     load=load_options(args), adapter=args.adapter, merge=args.merge)


def run(args: argparse.Namespace, ui: UI) -> int:
    job = job_of(args)
    if args.dry_run:
        margs = resolve_method_args(job)
        ui.table(f"method {job.method}: resolved configuration", ["argument", "value"],
                 [[k, v] for k, v in margs.to_dict().items()])
        ui.json({"method": job.method, "config_file": str(job.config) if job.config else None,
                 "config": margs.to_dict()})
        return 0
    result = forget(job, ui)
    print_receipt(ui, result.receipt)
    ui.json(result.receipt.to_dict())
    return 0


def print_receipt(ui: UI, r: Receipt) -> None:
    b, a = r.before, r.after
    rows = [["forget vs held-out LOSS AUC", b.forget_auc, a.forget_auc],
            ["forget mean NLL", b.forget_nll, a.forget_nll],
            ["retain utility (mean answer prob)", b.retain_prob, a.retain_prob]]
    battery = r.battery  # the battery's own JSON report
    # the headline says what the verdict says: "removed" only when the battery found it REMOVED, and an exact
    # deletion what it is (the recipe run without the records), the battery's verdict beside it
    what = ("answered with no change" if r.unchanged else
            f"deleted exactly (shard(s) {', '.join(sorted(r.exact.retrained))} retrained, "
            f"{r.exact.cost_relative_to_sharded_training:.2f} x training anew), battery verdict {r.verdict}"
            if r.exact is not None else
            f"removed with {r.method} (within +-{battery['verdict']['margin']:.3f} AUC)"
            if r.removed else f"unlearned with {r.method}, verdict {r.verdict}")
    ui.table(f"receipt: {len(r.request.ids)} record(s) {what} -> {r.out}", ["check", "before", "after"], rows)
    attacks = [[row["attack"], row["verdict"]["status"],
                " ".join(f"{e['score']} {e['auc']:.2f}" for e in row["verdict"]["evidence"]),
                f"{row['verdict']['margin']:.3f}", _bound(row["verdict"]["bound"]), row["extraction"]["exact_match"]]
               for row in battery["attacks"]]
    kind = "relative to the retain model" if battery["verdict"]["relative"] else "absolute"
    ui.table(f"attack battery on the held-out verdict split ({kind})",
             ["attack", "verdict", "AUC per score", "margin", "residual bound", "exact match"], attacks)
    for note in battery["notes"]:
        ui.print(f"[dim]{escape(note)}[/]")
    colour = {"REMOVED": "green", "NOT REMOVED": "red", "OVER-UNLEARNED": "red"}.get(r.verdict, "yellow")
    ui.print(f"[bold {colour}]{escape(r.verdict_message)}[/]")
    leak = r.privleak_vs_retain
    extra = f", privleak vs retain {leak:.1f}%" if leak is not None else ""
    memory = (f"peak memory {r.peak_memory_mb:.0f} MiB ({r.peak_memory_kind})" if r.peak_memory_mb is not None
              else "peak memory not measured")
    ui.print(f"steps {r.steps} ({r.stop_reason}: {escape(r.stop_message)}); wall {r.wall_seconds:.1f} s "
             f"+ battery {r.battery_seconds:.1f} s; {memory}; retain utility x{r.retain_utility_relative:.3f}"
             f"{extra}")
    if r.ledger is not None:
        ui.print(f"ledger: {r.ledger.path} (entry {r.entry_hash[:16]}...)")


def set_overrides(items: list[str]) -> JsonObject:
    """``--set key=value`` pairs as method overrides (values parsed as yaml scalars or lists)."""
    import yaml

    from unlearn.errors import ConfigError

    out: JsonObject = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: cannot read {value!r} as a value") from None
    return out


def _bound(value: float | None) -> str:
    return "unbounded (saturated AUC)" if value is None else f"{value:.3f}"
