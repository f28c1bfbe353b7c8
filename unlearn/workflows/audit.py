"""Audit a model: is a member set still detectable? Membership scores with p-values and a verdict, privleak
and forget quality against a retrained model, and the optional relearning / extraction attacks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.benchmark.generator import RETAIN_OF
from unlearn.config import LoadOptions
from unlearn.errors import UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.workflows.common import (
    SILENT,
    BenchmarkOptions,
    PathLike,
    Reporter,
    benchmark_if_needed,
    is_builtin,
    model_path,
    new_out_dir,
    write_outputs,
)

ATTACKS = ("relearn", "extract", "quantize")


@dataclass(frozen=True)
class AuditJob:
    """``model`` / ``reference`` / ``retain``: local directories or ``builtin:target`` / ``builtin:retain``
    (model None = the built-in target; its members and non-members then default to the built-in forget
    split and holdout, and ``retain`` to the built-in retain model)."""

    model: PathLike | None = None
    members: PathLike | None = None
    nonmembers: PathLike | None = None
    reference: PathLike | None = None
    retain: PathLike | None = None
    scores: tuple[str, ...] = ("loss", "zlib", "mink", "minkpp")
    k: float = 0.4
    alpha: float = 0.05
    seed: int = 0
    batch_size: int = 32
    attacks: tuple[str, ...] = ()
    muse: bool = False  # MUSE's VerbMem (text members) and KnowMem (QA members), with privleak
    tofu: bool = False  # TOFU's evaluation (open-unlearning names) on QA members with paraphrased/perturbed answers
    retain_eval: PathLike | None = None  # TOFU utility sets (built-in: 200 retain records, real_authors, world_facts)
    real_authors: PathLike | None = None
    world_facts: PathLike | None = None
    relearn_set: PathLike | None = None
    relearn_steps: int = 20
    relearn_lr: float = 3e-4
    out: PathLike | None = None  # a NEW directory for audit.json and audit.png; default runs/audit-TIME
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model
    adapter: PathLike | None = None  # a LoRA adapter applied on ``model``
    fields: Mapping[str, str] | None = None  # the data's column names, ours -> theirs (every file the job reads)


@dataclass
class AuditResult:
    out: Path
    report: Any  # unlearn.auditors.audit.AuditReport
    attacks: JsonObject = field(default_factory=dict)
    payload: JsonObject = field(default_factory=dict)  # what audit.json holds


def audit(job: AuditJob, report: Reporter = SILENT) -> AuditResult:
    from unlearn.auditors.audit import AuditArgs
    from unlearn.auditors.audit import audit as run_audit
    from unlearn.auditors.battery import BatteryArgs
    from unlearn.auditors.plots import plot_audit
    from unlearn.data import format_of, load_records, special_prefix
    from unlearn.model import check_same_tokenizer, load_model

    unknown = sorted(set(job.attacks) - set(ATTACKS))
    if unknown:
        raise UnlearnError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    audit_args = AuditArgs(scores=tuple(job.scores), k=job.k, alpha=job.alpha, batch_size=job.batch_size,
                           seed=job.seed)
    BatteryArgs(alpha=job.alpha, relearn_steps=job.relearn_steps, relearn_lr=job.relearn_lr)  # checked: one error
    bench = benchmark_if_needed([job.model, job.reference, job.retain], job.benchmark, report)
    path = model_path(job.model, bench)
    if not is_builtin(job.model) and (job.members is None or job.nonmembers is None):
        raise UnlearnError("--members and --nonmembers are required unless auditing the built-in benchmark")
    members = load_records(job.members, fields=job.fields) if job.members else bench.split(bench.retain_split)
    nonmembers = load_records(job.nonmembers, fields=job.fields) if job.nonmembers else bench.split("holdout")
    out = new_out_dir(job.out, "audit")
    model, tok = load_model(path, job.load, adapter=job.adapter)
    reference = None
    if job.reference:
        ref_path = model_path(job.reference, bench)
        reference, ref_tok = load_model(ref_path, job.load)
        check_same_tokenizer(tok, ref_tok, str(path), str(ref_path))
    retain_path = (model_path(job.retain, bench) if job.retain else
                   bench.retain if is_builtin(job.model) and job.members is None else None)
    retain = None
    if retain_path:
        retain, retain_tok = load_model(retain_path, job.load)
        check_same_tokenizer(tok, retain_tok, str(path), str(retain_path))
    tofu = retain is not None and all(r.is_qa and r.perturbed_answers for r in members)
    total = (len(members) + len(nonmembers)) * (1 + (retain is not None))
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        report.progress("scoring", done[0], total)

    findings = run_audit(model, tok, members, nonmembers, audit_args, reference=reference, retain_model=retain,
                       tofu=tofu, on_batch=on_batch)
    attacks = run_attacks(job, model, tok, members, nonmembers, report, retain)
    if job.muse:
        report.progress("MUSE evaluation", 0, None)
        findings.muse = muse_evaluation(model, tok, members, findings)
    if job.tofu:
        report.progress("TOFU evaluation", 0, None)
        findings.tofu["summary"] = tofu_evaluation(job, bench, model, tok, members, retain)
    payload = {"model": str(path), "reference": str(job.reference) if job.reference else None,
               "retain": str(retain_path) if retain_path else None, "template": format_of(tok).describe(),
               "special_prefix": special_prefix(tok),
               "args": {**audit_args.to_dict(), "scores": list(audit_args.scores)}, **findings.to_dict(),
               "attacks": attacks}
    write_outputs(out, {"audit.json": lambda p: p.write_text(json.dumps(payload, indent=2)),
                        "audit.png": lambda p: plot_audit(findings, p, title=str(path))})
    return AuditResult(out, findings, attacks, payload)


def muse_evaluation(model: Any, tok: Any, members: Any, findings: Any) -> JsonObject:
    """MUSE's numbers under open-unlearning's names, for the kinds of member records present."""
    from unlearn.auditors.muse import knowmem_rouge, verbmem_rouge

    out: JsonObject = {}
    if any(not r.is_qa for r in members):
        out["forget_verbmem_ROUGE"] = float(verbmem_rouge(model, tok, members).mean())
    if any(r.is_qa for r in members):
        out["forget_knowmem_ROUGE"] = float(knowmem_rouge(model, tok, members).mean())
    mink = [r for r in findings.results if r.score == "mink" and r.privleak is not None]
    if mink:
        out["privleak"] = mink[0].privleak
    return out


def tofu_evaluation(job: AuditJob, bench: Any, model: Any, tok: Any, members: Any, retain: Any) -> JsonObject:
    """TOFU's numbers under open-unlearning's names; its utility sets from the job, else the built-in ones."""
    import random

    from unlearn.auditors.tofu import tofu_summary
    from unlearn.data import load_records

    def records(path: PathLike | None, builtin: str) -> list[Any]:
        if path is not None:
            return load_records(path, fields=job.fields)
        return bench.split(builtin) if bench is not None and is_builtin(job.model) else []

    retain_eval = records(job.retain_eval, RETAIN_OF[bench.retain_split] if bench is not None else "")
    if job.retain_eval is None and retain_eval:
        retain_eval = random.Random(0).sample(retain_eval, min(200, len(retain_eval)))
    missing = [f for f, v in (("--retain-eval", job.retain_eval), ("--real-authors", job.real_authors),
                              ("--world-facts", job.world_facts)) if v is None]
    if missing and not is_builtin(job.model):
        raise UnlearnError(f"--tofu model utility needs {', '.join(missing)} (TOFU's retain_perturbed, "
                           "real_authors_perturbed and world_facts_perturbed)")
    return tofu_summary(model, tok, members, retain_model=retain, retain_eval=retain_eval,
                        real_authors=records(job.real_authors, "real_authors"),
                        world_facts=records(job.world_facts, "world_facts"), batch_size=job.batch_size)


def run_attacks(job: AuditJob, model: Any, tok: Any, members: Any, nonmembers: Any, report: Reporter,
                retain: Any = None) -> JsonObject:
    """The robustness attacks asked for: greedy extraction, relearning, and the quantization battery
    (8- and 4-bit RTN, each with a two-sided verdict, relative to ``retain`` when given)."""
    from unlearn.auditors.robustness import extraction, relearn_report
    from unlearn.data import load_records

    out: JsonObject = {}
    if "quantize" in job.attacks:
        from unlearn.auditors.battery import BatteryArgs, removal_battery

        report.progress("quantization attack", 0, None)
        battery = removal_battery(model, tok, members, nonmembers,
                                  BatteryArgs(alpha=job.alpha, seed=job.seed, exhaustive=True), retain_model=retain)
        out["quantize"] = battery.to_dict()
    if "extract" in job.attacks:
        report.progress("extraction attack", 0, None)
        out["extract"] = {"members": extraction(model, tok, members), "nonmembers": extraction(model, tok, nonmembers)}
    if "relearn" in job.attacks:
        report.progress("relearning attack", 0, None)
        relearn_set = load_records(job.relearn_set, fields=job.fields) if job.relearn_set else None
        out["relearn"] = relearn_report(model, tok, members, nonmembers, relearn_set, steps=job.relearn_steps,
                                        lr=job.relearn_lr, seed=job.seed)
    return out
