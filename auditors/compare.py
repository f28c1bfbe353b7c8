"""Compare unlearning methods on one forget set: same starting weights and seed for each, one table of
detectability (AUC per score, privleak vs the retain model), forget quality, utility and cost."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.auditors.battery import (
    BatteryArgs,
    KnownScores,
    Scores,
    forget_holdout_scores,
    reference_scores,
    removal_battery,
)
from unlearn.auditors.metrics import auc, privleak
from unlearn.auditors.stopping import make_monitor, relearned_scores, returned_scores
from unlearn.auditors.tofu import (
    OPEN_UNLEARNING_NAMES,
    QAEval,
    evaluate_qa,
    forget_quality,
    forget_summary,
    harmonic_mean,
    model_utility_parts,
    retain_utility,
)
from unlearn.data import Record
from unlearn.errors import ConfigError, InputError
from unlearn.jsonio import JsonObject
from unlearn.methods import METHODS, get_method, load_method_args, measured
from unlearn.splits import Splits


@dataclass
class Sets:
    """A comparison's records: the forget set, what the unlearners may use (``retain``), the held-out and
    retain-evaluation records by role (`Splits`: the stopping rule's calibration halves, the metrics' verdict
    halves; empty calibration halves: the rule uses the verdict halves) and TOFU's utility views."""

    forget: list[Record]
    retain: list[Record]
    splits: Splits
    real_authors: list[Record] = field(default_factory=list)  # answer + perturbed answers
    world_facts: list[Record] = field(default_factory=list)


@dataclass
class MethodSpec:
    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    config: str | None = None

    def args(self, common: Mapping[str, Any] | None, seed: int) -> Any:
        """The method's arguments in a comparison: defaults <- config <- common <- seed <- its own."""
        return load_method_args(self.method, self.config, {**(common or {}), "seed": seed, **self.overrides})


def probe_key(args: Any) -> tuple[int, float, int]:
    """What the stopping rule's relearning probe of the retain model depends on (besides the sets)."""
    return args.relearn_steps, args.relearn_lr, args.seed


@dataclass
class Reference:
    """What every unlearned model is judged against: the retain (retrained) model's numbers, and its scores
    for the relative stopping rule (forget + calibration holdout) and verdict (every attack of the battery)."""

    aucs: dict[str, float]
    forget_qa: QAEval | None
    stopping: Scores | None = None
    battery: dict[str, Scores] = field(default_factory=dict)
    probes: dict[tuple[int, float, int], Scores | None] = field(default_factory=dict)  # `probe_key` -> the retain
    # model's `relearned_scores` (the relearning probe's reference)


def detectability(scores: Scores) -> dict[str, float]:
    """Forget-vs-holdout AUC of every score, from `forget_holdout_scores` (or the battery's "as is" pass)."""
    forget, holdout = scores
    return {name: auc(forget[name], holdout[name]) for name in forget}


def _tofu(records: Sequence[Record], paraphrased: bool = True) -> bool:
    return bool(records) and all(r.is_qa and (r.paraphrased_answer is not None or not paraphrased)
                                 and r.perturbed_answers for r in records)


def evaluate(model: torch.nn.Module, tokenizer: Any, sets: Sets, ref: Reference | None,
             scores: Scores | None = None) -> tuple[JsonObject, JsonObject]:
    """(summary metrics, per-record metrics) of one model. Published metrics under published names:
    privleak (MUSE), forget truth ratio / forget quality / model utility (TOFU); ``retain_utility`` is ours,
    reported instead of ``model_utility`` when there are no real-authors / world-facts sets. ``scores``: the
    model's `forget_holdout_scores` on ``sets.forget`` / ``sets.splits.holdout_verdict`` when already computed."""
    aucs = detectability(scores or forget_holdout_scores(model, tokenizer, sets.forget, sets.splits.holdout_verdict))
    out: JsonObject = {f"auc_{k}": v for k, v in aucs.items()}
    per_record: JsonObject = {}
    if ref is not None:
        out.update({f"privleak_{k}": privleak(v, ref.aucs[k]) for k, v in aucs.items()})
    if _tofu(sets.forget):
        fe = evaluate_qa(model, tokenizer, sets.forget)
        out.update(forget_summary(fe))
        per_record["forget"] = fe
        if ref is not None and ref.forget_qa is not None:
            out["forget_quality"] = forget_quality(fe, ref.forget_qa)
    if _tofu(sets.splits.retain_verdict):
        retain_qa = evaluate_qa(model, tokenizer, sets.splits.retain_verdict)
        out["retain_prob"] = float(retain_qa.prob.mean())
        if _tofu(sets.real_authors, False) and _tofu(sets.world_facts, False):
            ra, wf = (evaluate_qa(model, tokenizer, s, true_side="answer") for s in (sets.real_authors,
                                                                                      sets.world_facts))
            parts = model_utility_parts(retain_qa, ra, wf)
            out["model_utility"] = harmonic_mean(list(parts.values()))
            out["model_utility_parts"] = parts
        else:
            out["retain_utility"] = retain_utility(retain_qa)
    return out, per_record


def reference_of(model: torch.nn.Module, tokenizer: Any, sets: Sets, probes: Sequence[Any] = ()) -> Reference:
    """The retain model's reference; ``probes``: the method arguments of the comparison (the relearning probes
    they ask for are run on it once each)."""
    split = sets.splits
    battery = reference_scores(model, tokenizer, sets.forget, split.holdout_verdict)
    holdout = split.holdout_calibration or split.holdout_verdict
    wanted = {probe_key(a): a for a in probes if a.relearn_probe}  # one probe per setting, however many ask
    return Reference(detectability(battery["as is"]),
                     evaluate_qa(model, tokenizer, sets.forget, rouge=False) if _tofu(sets.forget) else None,
                     forget_holdout_scores(model, tokenizer, sets.forget, holdout), battery,
                     {k: relearned_scores(model, tokenizer, sets.forget, holdout, a) for k, a in wanted.items()})


def judged(model: torch.nn.Module, tokenizer: Any, sets: Sets, ref: Reference | None,
           known: KnownScores | None = None) -> tuple[JsonObject, JsonObject]:
    """`evaluate` plus the receipt's verdict on the metrics' held-out half (columns ``verdict`` and
    ``battery``): the battery, relative to the retain model when there is one, whose "as is" pass gives the
    AUC columns (so every record is scored: no first look; ``known``: the stopping rule's forget scores of
    these weights)."""
    b = removal_battery(model, tokenizer, sets.forget, sets.splits.holdout_verdict, BatteryArgs(first_look=0),
                        reference=ref.battery if ref else None, known=known)
    metrics, per_record = evaluate(model, tokenizer, sets, ref, b.scores["as is"])
    return {**metrics, "verdict": b.verdict.status, "battery": b.to_dict()}, per_record


def parse_specs(methods: Sequence[Any], where: str = "methods") -> list[MethodSpec]:
    """``["npo", {"name": "soul", "label": "soul-npo", "args": {...}, "config": path}]`` -> specs."""
    import unlearn.methods  # noqa: F401

    specs: list[MethodSpec] = []
    for i, m in enumerate(methods):
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, Mapping) or "name" not in m:
            raise InputError(f"entry {i + 1} must be a method name or a mapping with 'name'", file=where,
                             field="methods")
        unknown = set(m) - {"name", "label", "args", "config"}
        if unknown:
            raise InputError(f"entry {i + 1}: unknown key(s) {', '.join(sorted(unknown))}", file=where,
                             field="methods")
        if m["name"] not in METHODS:
            raise ConfigError(f"{where}: unknown method '{m['name']}'; known: {', '.join(METHODS.names())}")
        specs.append(MethodSpec(str(m.get("label", m["name"])), m["name"], dict(m.get("args") or {}),
                                m.get("config")))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels) or not specs:
        raise InputError("method labels must be unique and at least one method given", file=where,
                         field="methods")
    for s in specs:  # fail on a bad argument before any model is touched
        try:
            load_method_args(s.method, s.config, s.overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}: entry '{s.label}': {exc}") from None
    return specs


def run_compare(load: Callable[[], tuple[torch.nn.Module, Any]], sets: Sets, specs: Sequence[MethodSpec], *,
                reference: Reference | None, seed: int = 0, common: Mapping[str, Any] | None = None,
                on_method: Callable[[str], Any] | None = None,
                on_step: Callable[[int, int, JsonObject], None] | None = None) -> list[JsonObject]:
    """Run each method from freshly loaded weights with the same seed, under the stopping rule a receipt uses
    (relative to the retain model when there is one); one row of metrics and the receipt's verdict per
    method."""
    rows = []
    for spec in specs:
        if on_method is not None:
            on_method(spec.label)
        args = spec.args(common, seed)
        model, tok = load()
        torch.manual_seed(seed)
        random.seed(seed)
        kept: dict[int, KnownScores] = {}
        monitor = (make_monitor(tok, sets.forget, sets.splits.holdout_calibration or sets.splits.holdout_verdict,
                                sets.splits.retain_calibration or sets.splits.retain_verdict, args,
                                retain_scores=reference.stopping if reference is not None else None, kept=kept,
                                probe_reference=reference.probes.get(probe_key(args)) if reference else None)
                   if args.eval_every else None)
        res = measured(get_method(spec.method).run, model, tok, sets.forget, sets.retain, args, monitor=monitor,
                       on_step=on_step)
        metrics, per_record = judged(res.model, tok, sets, reference, returned_scores(res, kept))
        rows.append({"label": spec.label, "method": spec.method, **metrics, "wall_seconds": res.wall_seconds,
                     "peak_memory_mb": res.peak_memory_mb, "steps": res.steps, "stop_reason": res.stop_reason,
                     "args": args.to_dict(), "_per_record": per_record})
        del model, res
    return rows


def open_unlearning_files(row: Mapping[str, Any], out: Path, benchmark: str = "TOFU") -> None:
    """``<benchmark>_EVAL.json`` (metric -> {agg_value, value_by_index}) and ``<benchmark>_SUMMARY.json``
    (metric -> value) in open-unlearning's layout and metric names (privleak from Min-K% with k 0.4, as
    theirs; the nine model-utility components under their pre_compute names in the EVAL file)."""
    summary = {theirs: row[ours] for ours, theirs in OPEN_UNLEARNING_NAMES.items() if row.get(ours) is not None}
    fe: QAEval | None = row.get("_per_record", {}).get("forget")
    per_index: dict[str, JsonObject] = {}
    if fe is not None:
        per_index = {
            "forget_Q_A_Prob": {str(i): {"prob": float(p)} for i, p in enumerate(fe.prob)},
            "forget_truth_ratio": {str(i): {"score": float(t)} for i, t in enumerate(fe.truth_ratio)},
            "extraction_strength": {str(i): {"score": float(t)} for i, t in enumerate(fe.extraction_strength)},
            "exact_memorization": {str(i): {"score": float(t)} for i, t in enumerate(fe.exact_memorisation)},
        }
        if fe.rouge_l is not None:
            per_index["forget_Q_A_ROUGE"] = {str(i): {"rougeL_recall": float(t)} for i, t in enumerate(fe.rouge_l)}
    evals: JsonObject = {k: {"agg_value": v, **({"value_by_index": per_index[k]} if k in per_index else {})}
                             for k, v in summary.items()}
    if "model_utility" in evals and row.get("model_utility_parts"):
        evals["model_utility"]["pre_compute"] = {k: {"agg_value": v} for k, v in row["model_utility_parts"].items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{benchmark}_EVAL.json").write_text(json.dumps(evals, indent=2))
    (out / f"{benchmark}_SUMMARY.json").write_text(json.dumps(summary, indent=2))
