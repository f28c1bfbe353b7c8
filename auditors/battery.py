"""The attack battery behind every deletion receipt: the one-pass scores on the model as it is, after 8- and
4-bit round-to-nearest quantization, and (opt-in, it costs training steps) after relearning; each with greedy
extraction and a two-sided verdict. The receipt's verdict is the worst case over the battery."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from unlearn.attacks.quantize import quantized_copy
from unlearn.attacks.runner import ONE_PASS_SCORES, ScoreTable, score_records
from unlearn.auditors.audit import group_labels
from unlearn.auditors.robustness import extraction, extraction_stats, split_for_relearning
from unlearn.auditors.verdict import NOT_REMOVED, Verdict, two_sided_verdict, worst_case
from unlearn.data import Record
from unlearn.logprobs import Prepared, max_length_of, prepare

Scores = tuple[dict[str, Any], dict[str, Any]]  # (forget, holdout): score name -> array


@dataclass
class BatteryArgs:
    alpha: float = 0.05
    detectable_bound: float = 0.75
    quant_bits: tuple[int, ...] = (8, 4)
    group_size: int = 32  # 4-bit groups along the input dimension (per channel when it does not divide)
    relearn: bool = False
    relearn_steps: int = 20
    relearn_lr: float = 3e-4
    n_boot: int = 500
    seed: int = 0
    exhaustive: bool = False  # run every attack; else stop at the first NOT REMOVED (the worst case is decided)


@dataclass
class AttackRow:
    attack: str
    verdict: Verdict
    extraction: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "verdict": self.verdict.to_dict(), "extraction": self.extraction,
                "seconds": round(self.seconds, 3)}


@dataclass
class Battery:
    verdict: Verdict  # the worst case
    rows: list[AttackRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference_seconds: float = 0.0  # scoring the retain model under every attack (0 when given precomputed)
    scores: dict[str, Scores] = field(default_factory=dict, repr=False)  # the model's, per attack
    reference: Mapping[str, Scores] = field(default_factory=dict, repr=False)  # the retain model's

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": asdict(self.verdict), "attacks": [r.to_dict() for r in self.rows], "notes": self.notes,
                "reference_seconds": round(self.reference_seconds, 3)}


def split_by_group(records: Sequence[Record], fraction: float = 0.5, seed: int = 0) -> tuple[list[Record],
                                                                                             list[Record]]:
    """(calibration, verdict) halves, whole groups (people) on one side when records carry them."""
    key = group_labels(records) or [r.id for r in records]
    groups = sorted(set(key))
    random.Random(seed).shuffle(groups)
    cal = set(groups[: round(fraction * len(groups))])
    return ([r for r, g in zip(records, key, strict=True) if g in cal],
            [r for r, g in zip(records, key, strict=True) if g not in cal])


def _split(table: ScoreTable, n: int) -> Scores:
    return {k: v[:n] for k, v in table.scores.items()}, {k: v[n:] for k, v in table.scores.items()}


def forget_holdout_scores(model: torch.nn.Module, tok: Any, forget: Sequence[Record], holdout: Sequence[Record],
                          prepared: Prepared | None = None) -> Scores:
    """Every one-pass score of ``forget`` and of ``holdout`` (``prepared``: `prepare` of the two, in order)."""
    table = score_records(model, tok, [*forget, *holdout], list(ONE_PASS_SCORES), prepared=prepared)
    return _split(table, len(forget))


def prepare_pair(model: torch.nn.Module, tok: Any, forget: Sequence[Record], holdout: Sequence[Record]) -> Prepared:
    """The batches of ``forget`` then ``holdout``, tokenised once for the several models that score them."""
    return prepare([*forget, *holdout], tok, max_length=max_length_of(model))


def scores_and_extraction(model: torch.nn.Module, tok: Any, forget: Sequence[Record], holdout: Sequence[Record],
                          prepared: Prepared | None = None) -> tuple[Scores, dict[str, float]]:
    """`forget_holdout_scores` and the forget set's `extraction`, from the same forward pass."""
    table = score_records(model, tok, [*forget, *holdout], list(ONE_PASS_SCORES), hits=True, prepared=prepared)
    n = len(forget)
    ext = (extraction_stats(table.logprobs.take(slice(0, n))) if table.logprobs is not None
           else extraction(model, tok, forget))  # several processes: the gathered table has no log-probs
    return _split(table, n), ext


def weight_attacks(args: BatteryArgs) -> list[tuple[str, Callable[[torch.nn.Module], torch.nn.Module]]]:
    """The model as is and its round-to-nearest quantized copies (8-bit per channel, lower bits group-wise)."""
    variants: list[tuple[str, Callable[[torch.nn.Module], torch.nn.Module]]] = [("as is", lambda m: m)]
    variants += [(f"{b}-bit RTN", lambda m, b=b: quantized_copy(m, b, args.group_size if b < 8 else None))
                 for b in args.quant_bits]
    return variants


def request_verdicts(model: torch.nn.Module, tokenizer: Any, requests: Mapping[str, Sequence[Record]],
                     holdout: Sequence[Record], args: BatteryArgs = BatteryArgs(), *,
                     retain_model: torch.nn.Module | None = None) -> dict[str, Verdict]:
    """The verdict of each answered request (name -> its records), worst case over the model as is and its
    quantized copies; one scoring pass per attack over all requests' records (the regression guard). The
    requests are one family of tests: each is judged at ``alpha / len(requests)`` (Bonferroni), so a guard
    over many requests does not raise false alarms by its number of tests."""
    names = list(requests)
    alpha = args.alpha / max(1, len(names))
    records = [r for n in names for r in requests[n]]
    groups = group_labels(holdout)
    verdicts: dict[str, list[Verdict]] = {n: [] for n in names}
    batches = prepare_pair(model, tokenizer, records, holdout)
    for attack_name, attack in weight_attacks(args):
        fm, hm = forget_holdout_scores(attack(model), tokenizer, records, holdout, batches)
        rm = rh = None
        if retain_model is not None:
            rm, rh = forget_holdout_scores(attack(retain_model), tokenizer, records, holdout, batches)
        start = 0
        for n in names:
            rows = slice(start, start + len(requests[n]))
            start = rows.stop
            kw: dict[str, Any] = {}
            if rm is not None and rh is not None:
                kw = {"retain_members": {k: v[rows] for k, v in rm.items()}, "retain_nonmembers": rh}
            verdicts[n].append(two_sided_verdict(
                {k: v[rows] for k, v in fm.items()}, hm, nonmember_groups=groups,
                member_groups=group_labels(requests[n]), alpha=alpha, detectable_bound=args.detectable_bound,
                n_boot=args.n_boot, seed=args.seed, attack=attack_name, **kw))
    return {n: worst_case(v) for n, v in verdicts.items()}


def battery_plan(tokenizer: Any, forget: Sequence[Record], args: BatteryArgs) -> tuple[
        list[tuple[str, Callable[[torch.nn.Module], torch.nn.Module], list[Record]]], list[str]]:
    """(name, attack, the forget records it is measured on) for every attack of the battery, and notes; the
    weight attacks share one list of records."""
    whole = list(forget)
    plan = [(name, attack, whole) for name, attack in weight_attacks(args)]
    notes = []
    if args.relearn:
        learn, evaluated_half = split_for_relearning(forget, args.seed)
        if learn and evaluated_half:
            from unlearn.attacks.adversarial import relearn

            plan.append(("relearn", lambda m: relearn(m, tokenizer, learn, steps=args.relearn_steps,
                                                      lr=args.relearn_lr, seed=args.seed), evaluated_half))
        else:
            notes.append("relearning attack skipped: the forget set has a single group to relearn and measure on")
    return plan, notes


def reference_scores(retain_model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record],
                     holdout: Sequence[Record], args: BatteryArgs = BatteryArgs()) -> dict[str, Scores]:
    """The retain model's scores under every attack of the battery: they do not depend on the unlearned model,
    so one request judged for several methods (compare, benchmarks) computes them once."""
    plan, _ = battery_plan(tokenizer, forget, args)
    batches = batches_of(retain_model, tokenizer, holdout)
    return {name: _attacked_scores(retain_model, tokenizer, attack, measured, holdout, batches)
            for name, attack, measured in plan}


def _attacked_scores(model: torch.nn.Module, tokenizer: Any, attack: Callable[[torch.nn.Module], torch.nn.Module],
                     measured: list[Record], holdout: Sequence[Record],
                     batches: Callable[[list[Record]], Prepared]) -> Scores:
    return forget_holdout_scores(attack(model), tokenizer, measured, holdout, batches(measured))


def batches_of(model: torch.nn.Module, tokenizer: Any, holdout: Sequence[Record]) -> Callable[[list[Record]],
                                                                                              Prepared]:
    """measured records -> their `prepare_pair` with ``holdout``, made once per list (the battery's weight
    attacks share one)."""
    made: dict[int, Prepared] = {}

    def get(measured: list[Record]) -> Prepared:
        if id(measured) not in made:
            made[id(measured)] = prepare_pair(model, tokenizer, measured, holdout)
        return made[id(measured)]

    return get


def removal_battery(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                    args: BatteryArgs = BatteryArgs(), *, retain_model: torch.nn.Module | None = None,
                    reference: Mapping[str, Scores] | None = None) -> Battery:
    """Every attack of the battery on ``forget`` against the held-out ``holdout``; relative to
    ``retain_model`` (attacked the same way) when given, or to its ``reference_scores``. Unless
    ``args.exhaustive``, the attacks after the first one that finds the forget set NOT REMOVED are not run
    (named in the notes): no later one can change the worst case."""
    groups = group_labels(holdout)
    plan, notes = battery_plan(tokenizer, forget, args)
    ref: dict[str, Scores] = dict(reference or {})
    reference_seconds = 0.0
    rows, scores = [], {}
    batches = batches_of(model, tokenizer, holdout)  # shared with the retain model (the same tokenizer)
    for name, attack, measured in plan:
        if name not in ref and retain_model is not None:
            start = time.perf_counter()  # the retain model, attacked alike: only for the attacks that run
            ref[name] = _attacked_scores(retain_model, tokenizer, attack, measured, holdout, batches)
            reference_seconds += time.perf_counter() - start
        start = time.perf_counter()
        attacked = attack(model)
        (fm, hm), extracted = scores_and_extraction(attacked, tokenizer, measured, holdout, batches(measured))
        scores[name] = (fm, hm)
        kw: dict[str, Any] = {}
        if name in ref:
            kw = {"retain_members": ref[name][0], "retain_nonmembers": ref[name][1]}
        verdict = two_sided_verdict(fm, hm, nonmember_groups=groups, member_groups=group_labels(measured),
                                    alpha=args.alpha, detectable_bound=args.detectable_bound, n_boot=args.n_boot,
                                    seed=args.seed, attack=name, **kw)
        rows.append(AttackRow(name, verdict, extracted, time.perf_counter() - start))
        del attacked
        if verdict.status == NOT_REMOVED and not args.exhaustive and len(rows) < len(plan):
            notes.append(f"not run: {', '.join(n for n, _, _ in plan[len(rows):])} ('{name}' already found the "
                         "forget set NOT REMOVED, the most severe verdict; exhaustive runs every attack)")
            break
    return Battery(worst_case([r.verdict for r in rows]), rows, notes, reference_seconds, scores, ref)
