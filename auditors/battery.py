"""The attack battery behind every deletion receipt: the one-pass scores on the model as it is, after 8- and
4-bit round-to-nearest quantization, and (opt-in, it costs training steps) after relearning; each with greedy
extraction and a two-sided verdict. The receipt's verdict is the worst case over the battery."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from unlearn.attacks.quantize import quantized_copy
from unlearn.attacks.runner import ONE_PASS_SCORES, ScoreTable, score_records
from unlearn.auditors.robustness import extraction, extraction_stats, split_for_relearning
from unlearn.auditors.verdict import NOT_REMOVED, Verdict, two_sided_verdict, worst_case
from unlearn.config import RELEARN_LR, RELEARN_STEPS, Checked, arg
from unlearn.data import Record
from unlearn.jsonio import JsonObject
from unlearn.logprobs import Prepared, max_length_of, merged, prepare
from unlearn.params import weights_fingerprint
from unlearn.splits import group_labels

Scores = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (forget, holdout): score name -> array


@dataclass
class BatteryArgs(Checked):
    """The receipt's attack battery; every field checked when it is built (one error listing every problem)."""

    alpha: float = arg(0.05, "level of the verdict", gt=0, lt=1)
    margin: float | None = arg(None, "the equivalence margin (AUC); None: `default_margin` from the data", gt=0,
                               le=0.5)
    quant_bits: tuple[int, ...] = arg((8, 4), "RTN quantization attacks, bits per weight", ge=2, le=8)
    group_size: int = arg(32, "4-bit groups along the input dimension (per channel when it does not divide)", ge=1)
    relearn: bool = arg(False, "run the relearning attack")
    relearn_steps: int = arg(RELEARN_STEPS, "optimiser steps of the relearning attack", ge=1)
    relearn_lr: float = arg(RELEARN_LR, "learning rate of the relearning attack", gt=0)
    relearn_splits: int = arg(3, "relearning attacks, each on another half of the forget people (seeds seed, seed + "
                              "1, ...): what comes back depends on which people are relearned", ge=1)
    n_boot: int = arg(500, "bootstrap resamples", ge=1)
    seed: int = arg(0, "seed of the battery's random choices", ge=0)
    exhaustive: bool = arg(False, "run every attack; else stop at the first NOT REMOVED (the worst case is decided)")
    first_look: int = arg(48, "records per set an attack scores first (unless exhaustive; 0 = never): NOT REMOVED "
                          "there, at first_look_share x alpha, is its verdict (the rest is not scored)", ge=0)
    first_look_share: float = arg(0.2, "share of alpha spent on the first look", gt=0, le=1)


@dataclass
class KnownScores:
    """The forget set's one-pass scores (``ids`` order) and extraction on the weights being judged, computed
    already (the stopping rule's last full check): the "as is" attack then scores only the held-out records."""

    ids: list[str]
    scores: dict[str, np.ndarray]
    extraction: dict[str, float]
    weights: tuple[float, float] | None = None  # `weights_fingerprint` of the weights they were scored on


@dataclass
class AttackRow:
    attack: str
    verdict: Verdict
    extraction: dict[str, float]
    seconds: float

    def to_dict(self) -> JsonObject:
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

    def to_dict(self) -> JsonObject:
        return {"verdict": self.verdict.to_dict(), "attacks": [r.to_dict() for r in self.rows], "notes": self.notes,
                "reference_seconds": round(self.reference_seconds, 3)}


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
    requests and attacks are one family of tests: each is judged at ``alpha / (requests x attacks)``
    (Bonferroni), so a guard over many requests does not raise false alarms by its number of tests; the
    equivalence tests keep alpha (REMOVED needs every one)."""
    names = list(requests)
    alpha = args.alpha / max(1, len(names) * len(weight_attacks(args)))
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
                member_groups=group_labels(requests[n]), alpha=alpha, equivalence_alpha=args.alpha, margin=args.margin,
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
        from unlearn.attacks.adversarial import relearn

        for k in range(args.relearn_splits):
            learn, evaluated_half = split_for_relearning(forget, args.seed + k)
            if not (learn and evaluated_half):
                notes.append("relearning attack skipped: the forget set has a single group to relearn and measure on")
                break
            plan.append((relearn_name(k), lambda m, learn=learn, k=k: relearn(
                m, tokenizer, learn, steps=args.relearn_steps, lr=args.relearn_lr, seed=args.seed + k), evaluated_half))
    return plan, notes


def relearn_name(k: int) -> str:
    """The battery's name of its ``k``-th relearning attack (0-based): relearn, relearn #2, ..."""
    return "relearn" if k == 0 else f"relearn #{k + 1}"


def reference_scores(retain_model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record],
                     holdout: Sequence[Record], args: BatteryArgs = BatteryArgs()) -> dict[str, Scores]:
    """The retain model's scores under every attack of the battery: they do not depend on the unlearned model,
    so one request judged for several methods (compare, benchmarks) computes them once."""
    plan, _ = battery_plan(tokenizer, forget, args)
    made: dict[int, Prepared] = {}  # the weight attacks share one list of records
    out: dict[str, Scores] = {}
    for name, attack, measured in plan:
        if id(measured) not in made:
            made[id(measured)] = prepare_pair(retain_model, tokenizer, measured, holdout)
        out[name] = forget_holdout_scores(attack(retain_model), tokenizer, measured, holdout, made[id(measured)])
    return out


def look_order(n_measured: int, n_holdout: int, args: BatteryArgs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The positions of the measured and of the held-out records an attack scores in each look: a random
    ``args.first_look`` of each set first, then the rest; one look of everything when the sets are too small for
    a first look to save much (or it is off)."""
    k = args.first_look
    if args.exhaustive or k <= 0 or min(n_measured, n_holdout) < 2 * k:
        return [np.arange(n_measured)], [np.arange(n_holdout)]
    rng = np.random.default_rng(args.seed)
    f, h = rng.permutation(n_measured), rng.permutation(n_holdout)
    return [np.sort(f[:k]), np.sort(f[k:])], [np.sort(h[:k]), np.sort(h[k:])]


def removal_battery(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                    args: BatteryArgs = BatteryArgs(), *, retain_model: torch.nn.Module | None = None,
                    reference: Mapping[str, Scores] | None = None, known: KnownScores | None = None) -> Battery:
    """Every attack of the battery on ``forget`` against the held-out ``holdout``; relative to
    ``retain_model`` (attacked the same way) when given, or to its ``reference_scores``. Unless
    ``args.exhaustive``, the attacks after the first one that finds the forget set NOT REMOVED are not run
    (named in the notes): no later one can change the worst case; and the first attack first scores a random
    ``args.first_look`` records per set (`look_order`): NOT REMOVED there, at ``first_look_share`` x alpha, is
    its verdict, and the look at every record gets the rest of alpha (REMOVED and OVER-UNLEARNED are only ever
    said on every record). Multiplicity: one family per receipt, so the significance level is alpha divided
    over the attacks of the plan (Bonferroni); the equivalence tests keep alpha (REMOVED needs every one).
    ``scores`` and ``reference`` then hold the records scored, in their order. ``known``: the forget set's scores
    on these weights (`KnownScores`; used when its ids are the forget set's and its fingerprint these weights'):
    "as is" then scores only the held-out records."""
    plan, notes = battery_plan(tokenizer, forget, args)
    ctx = _Context(model, tokenizer, holdout, args, retain_model, reference or {}, group_labels(holdout), len(plan))
    rows: list[AttackRow] = []
    scores: dict[str, Scores] = {}
    ref: dict[str, Scores] = {}
    reference_seconds = 0.0
    for name, attack, measured in plan:
        start = time.perf_counter()
        reused = known if (name == plan[0][0] and known is not None and known.ids == [r.id for r in measured]
                           and known.weights is not None and known.weights == weights_fingerprint(model)) else None
        out = _attack(ctx, name, attack, measured, not rows, reused)
        if not out.final:
            notes.append(f"'{name}': NOT REMOVED on a first look at {len(out.fm['loss'])} of {len(measured)} forget "
                         f"and {len(out.hm['loss'])} of {len(holdout)} held-out records (alpha {out.alpha:.3g}); the "
                         "rest were not scored")
        scores[name] = (out.fm, out.hm)
        if out.reference is not None:
            ref[name] = out.reference
        reference_seconds += out.reference_seconds
        found = out.extraction
        extracted = {k: sum(e[k] * n for e, n in found) / sum(n for _, n in found) for k in found[0][0]}
        rows.append(AttackRow(name, out.verdict, extracted, time.perf_counter() - start - out.reference_seconds))
        if out.verdict.status == NOT_REMOVED and not args.exhaustive and len(rows) < len(plan):
            notes.append(f"not run: {', '.join(n for n, _, _ in plan[len(rows):])} ('{name}' already found the "
                         "forget set NOT REMOVED, the most severe verdict; exhaustive runs every attack)")
            break
    return Battery(worst_case([r.verdict for r in rows]), rows, notes, reference_seconds, scores, ref)


@dataclass
class _Context:
    """What every attack of one battery run shares: the model and the held-out side, the retain model or its
    given scores, and the tokenised looks (once per list of records: attacks, looks and models share them)."""

    model: torch.nn.Module
    tokenizer: Any
    holdout: Sequence[Record]
    args: BatteryArgs
    retain_model: torch.nn.Module | None
    given: Mapping[str, Scores]
    groups: list[str] | None
    attacks: int  # in the plan: the Bonferroni divisor
    made: dict[int, Prepared] = field(default_factory=dict)
    looks: dict[tuple[int, bool], tuple[list[np.ndarray], list[np.ndarray], list[Prepared]]] = field(
        default_factory=dict)


@dataclass
class _Outcome:
    verdict: Verdict
    fm: dict[str, np.ndarray]  # the scores of the records looked at, in their order
    hm: dict[str, np.ndarray]
    reference: Scores | None  # the retain model's, alike
    extraction: list[tuple[dict[str, float], int]]  # per look: (extraction, records it covers)
    reference_seconds: float
    final: bool  # the look at every record (False: a first look decided)
    alpha: float


def _attack(ctx: _Context, name: str, attack: Callable[[torch.nn.Module], torch.nn.Module],
            measured: Sequence[Record], first: bool, reused: KnownScores | None) -> _Outcome:
    """One attack of the battery: its looks (a first look for the first attack only: once one has gone on to
    every record without finding the forget set NOT REMOVED, the next, the same model quantized, rarely finds
    it on a few records) until one is final or finds the forget set NOT REMOVED."""
    args, holdout = ctx.args, ctx.holdout
    key = (id(measured), first)
    if key not in ctx.looks:
        fl, hl = look_order(len(measured), len(holdout), args if first else replace(args, first_look=0))
        ctx.looks[key] = (fl, hl, [])
    fl, hl, batches = ctx.looks[key]
    spent_ref = 0.0  # of the retain model's part, inside this attack's time
    mine: list[Scores] = []
    their: list[Scores] = []
    found: list[tuple[dict[str, float], int]] = [(reused.extraction, 1)] if reused is not None else []
    for look, (f, h) in enumerate(zip(fl, hl, strict=True)):
        fr, hr = [measured[i] for i in f], [holdout[i] for i in h]
        if len(batches) == look:  # tokenised when a look first runs, once per list of records
            batches.append(_look_batches(ctx.model, ctx.tokenizer, measured, holdout, f, h, ctx.made, ctx.looks))
        if name not in ctx.given and ctx.retain_model is not None:
            t0 = time.perf_counter()  # the retain model, attacked alike: only for the looks that run
            their.append(forget_holdout_scores(attack(ctx.retain_model), ctx.tokenizer, fr, hr, batches[look]))
            spent_ref += time.perf_counter() - t0
        # one attacked copy at a time (a quantized copy is the model's size); a look after the first is of
        # the first attack only, the model as is: nothing is made twice
        if reused is not None:
            held = score_records(ctx.model, ctx.tokenizer, hr, list(ONE_PASS_SCORES),
                                 prepared=batches[look].subset(range(len(f), len(f) + len(h)))).scores
            mine.append(({k: v[f] for k, v in reused.scores.items()}, held))
        else:
            part, ext = scores_and_extraction(attack(ctx.model), ctx.tokenizer, fr, hr, batches[look])
            mine.append(part)
            found.append((ext, len(f)))
        seen_f, seen_h = np.concatenate(fl[: look + 1]), np.concatenate(hl[: look + 1])
        back_f, back_h = np.argsort(seen_f), np.argsort(seen_h)
        fm, hm = _joined(mine, back_f, back_h)
        reference: Scores | None = None
        if name in ctx.given:
            reference = ({k: v[seen_f[back_f]] for k, v in ctx.given[name][0].items()},
                         {k: v[seen_h[back_h]] for k, v in ctx.given[name][1].items()})
        elif their:
            reference = _joined(their, back_f, back_h)
        final = look == len(fl) - 1
        # one family per receipt: alpha over the attacks (Bonferroni), and a first look's share spent from it
        share = 1.0 if len(fl) == 1 else args.first_look_share if not final else 1 - args.first_look_share
        alpha = args.alpha * share / ctx.attacks
        verdict = two_sided_verdict(
            fm, hm, nonmember_groups=None if ctx.groups is None else [ctx.groups[i] for i in seen_h[back_h]],
            member_groups=group_labels([measured[i] for i in seen_f[back_f]]), alpha=alpha,
            equivalence_alpha=args.alpha, margin=args.margin, n_boot=args.n_boot, seed=args.seed, attack=name,
            **(dict(zip(("retain_members", "retain_nonmembers"), reference, strict=True)) if reference else {}))
        if final or verdict.status == NOT_REMOVED:
            break
    return _Outcome(verdict, fm, hm, reference, found, spent_ref, final, alpha)


def _look_batches(model: torch.nn.Module, tokenizer: Any, measured: Sequence[Record], holdout: Sequence[Record],
                  f: np.ndarray, h: np.ndarray, made: dict[int, Prepared],
                  looks: Mapping[tuple[int, bool], tuple[list[np.ndarray], list[np.ndarray], list[Prepared]]]
                  ) -> Prepared:
    """The batches of one look (forget positions ``f``, held-out ``h``): a first look and its rest are tokenised
    for themselves (a first look that decides leaves the rest untokenised); a look at everything is tokenised
    once per list of records (``made``), joined from the first attack's looks when they ran."""
    n = len(measured)
    if len(f) < n or len(h) < len(holdout):
        return prepare_pair(model, tokenizer, [measured[i] for i in f], [holdout[i] for i in h])
    if id(measured) not in made:
        fl, hl, parts = looks.get((id(measured), True), ([], [], []))
        made[id(measured)] = (merged(parts, [[*a, *(n + b)] for a, b in zip(fl, hl, strict=True)])
                              if len(parts) == len(fl) > 1 else prepare_pair(model, tokenizer, measured, holdout))
    return made[id(measured)]


def _joined(parts: list[Scores], back_f: np.ndarray, back_h: np.ndarray) -> Scores:
    """The looks' scores, concatenated and put back in the records' order."""
    return ({k: np.concatenate([p[0][k] for p in parts])[back_f] for k in parts[0][0]},
            {k: np.concatenate([p[1][k] for p in parts])[back_h] for k in parts[0][1]})
