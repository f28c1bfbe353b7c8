"""`unlearn audit`: is a record set still detectable in a model? (membership inference)"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from unlearn.cli.common import UI, add_fields_arg, benchmark_options, comma_list, load_options, sub_parser
from unlearn.jsonio import JsonObject
from unlearn.workflows.audit import AuditJob, audit


def add_parser(sub: Any) -> None:
    a = sub_parser(sub, "audit", "is a record set still detectable in a model? (membership inference)")
    a.add_argument("--model", help="model directory, or builtin:target / builtin:retain (default: built-in target)")
    a.add_argument("--adapter", help="a LoRA adapter directory applied on --model (a directory holding "
                                     "adapter_config.json can also be given as --model itself)")
    a.add_argument("--members", help="JSONL of records to test (default: the built-in forget split)")
    a.add_argument("--nonmembers", help="JSONL of comparable records never trained on (default: built-in holdout)")
    a.add_argument("--reference", help="a model that never saw either set (same tokenizer), e.g. the pre-fine-"
                                        "tuning base model: the 'reference' score, and the verdict's baseline "
                                        "without --retain")
    a.add_argument("--retain", help="model retrained without the members (a directory or builtin:retain): adds "
                                    "privleak and forget quality")
    a.add_argument("--scores", default="loss,zlib,mink,minkpp",
                   help="comma list of loss,zlib,mink,minkpp,reference,gradnorm")
    a.add_argument("--k", type=float, default=0.4, help="fraction of lowest tokens for Min-K%% and Min-K%%++")
    a.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdict")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--fail-if-detected", action="store_true", help="exit 1 when the members are still detectable")
    a.add_argument("--attacks", default="", help="comma list of extra attacks: relearn, extract, quantize (8- and "
                                                 "4-bit RTN with two-sided verdicts)")
    a.add_argument("--relearn-set", help="JSONL to relearn on (default: half the members' groups; the rest "
                                         "is measured)")
    a.add_argument("--relearn-steps", type=int, default=20)
    a.add_argument("--relearn-lr", type=float, default=3e-4)
    a.add_argument("--muse", action="store_true", help="MUSE's VerbMem (ROUGE-L F1 of continuations of text members) "
                   "and KnowMem (ROUGE-L recall of answers to QA members), and privleak (Min-K%%, with --retain)")
    a.add_argument("--tofu", action="store_true", help="TOFU's evaluation under open-unlearning's names: forget "
                   "probability, ROUGE, truth ratio, forget quality (with --retain) and the 9-number model utility")
    a.add_argument("--retain-eval", help="--tofu: retain QA with paraphrased/perturbed answers (TOFU "
                                         "retain_perturbed; default with the built-in model: 200 retain records)")
    a.add_argument("--real-authors", help="--tofu: TOFU real_authors_perturbed (built-in: its real_authors split)")
    a.add_argument("--world-facts", help="--tofu: TOFU world_facts_perturbed (built-in: its world_facts split)")
    a.add_argument("--out", help="new directory for audit.json and audit.png (default runs/audit-TIME)")
    add_fields_arg(a)
    a.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    job = AuditJob(model=args.model, members=args.members, nonmembers=args.nonmembers, reference=args.reference,
                   retain=args.retain, scores=comma_list(args.scores), k=args.k, alpha=args.alpha, seed=args.seed,
                   batch_size=args.batch_size, attacks=comma_list(args.attacks), relearn_set=args.relearn_set,
                   relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr, muse=args.muse, tofu=args.tofu,
                   retain_eval=args.retain_eval, real_authors=args.real_authors, world_facts=args.world_facts,
                   out=args.out,
                   benchmark=benchmark_options(args),
                   load=load_options(args), adapter=args.adapter, fields=args.fields)
    result = audit(job, ui)
    report = result.report
    said = {e["score"]: e["status"] for e in report.removal.get("evidence", [])}
    rows = [[r.score, r.auc, f"[{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]", r.tpr_at_1pct_fpr, r.tpr_at_01pct_fpr,
             r.p_holm, _privleak(r), _row_word(r.detected, said.get(r.score), report.presence)]
            for r in report.results]
    ui.table(f"audit of {result.payload['model']}: {report.n_members} members vs {report.n_nonmembers} non-members",
             ["score", "AUC", "95% CI", "TPR@1%FPR", "TPR@0.1%FPR", "p more likely (Holm)", "privleak %", "verdict"],
             rows)
    if report.forget_quality is not None:
        ui.print(f"forget quality (KS p of truth ratios vs retain model): {report.forget_quality:.3g}")
    colour = "red" if report.detected else "green" if report.presence == "NOT DETECTABLE" else "yellow"
    ui.print(f"[bold {colour}]" + escape(report.verdict) + "[/]")
    for w in report.warnings:
        ui.print(f"[yellow]warning:[/] {w}")
    ui.print(f"[dim]{report.caveat}[/]")
    if report.muse:
        ui.table("MUSE (open-unlearning names and definitions)", ["metric", "value"],
                 [[k, v] for k, v in report.muse.items()])
    if "summary" in report.tofu:
        ui.table("TOFU (open-unlearning names and definitions)", ["metric", "value"],
                 [[k, v] for k, v in report.tofu["summary"].items()])
    print_attacks(ui, result.attacks)
    ui.print(f"report: {result.out / 'audit.json'}  plot: {result.out / 'audit.png'}")
    ui.json({**result.payload, "out": str(result.out)})
    return 1 if (args.fail_if_detected and report.detected) else 0


def _privleak(r: Any) -> str | None:
    if r.privleak is None:
        return None
    ci = f" [{r.privleak_ci[0]:.1f}, {r.privleak_ci[1]:.1f}]" if r.privleak_ci else ""
    return f"{r.privleak:.1f}{ci}"


def print_attacks(ui: UI, attacks: JsonObject) -> None:
    if "extract" in attacks:
        ui.table("extraction (greedy completion of the prompts)",
                 ["set", "exact match", "extraction strength", "token accuracy"],
                 [[k, *v.values()] for k, v in attacks["extract"].items()])
    if "quantize" in attacks:
        ui.table(f"quantization attack: worst case {attacks['quantize']['verdict']['status']}",
                 ["attack", "verdict", "AUC per score", "exact match"],
                 [[row["attack"], row["verdict"]["status"],
                   " ".join(f"{e['score']} {e['auc']:.2f}" for e in row["verdict"]["evidence"]),
                   row["extraction"]["exact_match"]] for row in attacks["quantize"]["attacks"]])
    if "relearn" in attacks:
        r = attacks["relearn"]
        ui.table(f"relearning attack: {r['steps']} steps (lr {r['lr']}) on {r['relearn_records']} records, "
                 f"measured on {r['evaluated_records']} other members",
                 ["", "exact match", "extraction strength", "LOSS AUC vs non-members", "mean answer prob"],
                 [[k, r[k]["exact_match"], r[k]["extraction_strength"], r[k]["loss_auc"], r[k]["mean_prob"]]
                  for k in ("before", "after")])


def _row_word(detected: bool, status: str | None, word: str) -> str:
    """A score's row in the words of the audit's verdict (two-sided: members more, or less, likely)."""
    if word == "CANNOT JUDGE":
        return "not judged (shift)"
    if detected:
        return "DETECTED (less likely)" if status == "OVER-UNLEARNED" else "DETECTED"
    return "within margin" if status == "REMOVED" else "not detected"
