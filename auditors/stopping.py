"""The stopping rule for unlearners (`make_monitor`) and the LOSS-only before/after check of receipts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from unlearn.attacks.runner import ONE_PASS_SCORES, score_records
from unlearn.auditors.battery import KnownScores, Scores, forget_holdout_scores
from unlearn.auditors.metrics import auc, mann_whitney_p
from unlearn.auditors.robustness import extraction_stats, split_for_relearning
from unlearn.auditors.verdict import (
    INCONCLUSIVE,
    MARGIN_UNITS,
    NOT_REMOVED,
    OVER_UNLEARNED,
    REMOVED,
    ScoreEvidence,
    Verdict,
    two_sided_verdict,
)
from unlearn.data import Record
from unlearn.jsonio import JsonObject
from unlearn.logprobs import Prepared, max_length_of, prepare
from unlearn.params import weights_fingerprint
from unlearn.receipt import LossCheck
from unlearn.splits import group_labels
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult


def forget_check(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record]) -> LossCheck:
    """LOSS AUC and one-sided MWU p of forget vs holdout, and retain utility (mean answer probability)."""
    scored = score_records(model, tokenizer, [*forget, *holdout, *retain_eval], ["loss"])
    s = scored.scores["loss"]
    return check_from_scores(s[: len(forget)], s[len(forget): len(forget) + len(holdout)],
                             s[len(forget) + len(holdout):])


def check_from_scores(forget_loss: np.ndarray, holdout_loss: np.ndarray,
                      retain_loss: np.ndarray | None = None) -> LossCheck:
    """`forget_check` from LOSS scores already computed (e.g. by the attack battery)."""
    f, h = forget_loss, holdout_loss
    retain = float(np.exp(retain_loss).mean()) if retain_loss is not None and len(retain_loss) else None
    return LossCheck(auc(f, h), mann_whitney_p(f, h), float(-f.mean()), retain)


QUICK_MARGIN = 0.2  # AUC above the target that is "far": a full check's every score (back-off ranking), or a
# skipped check's lower bound (the next check is deferred)
QUICK_ALPHA_SHARE = 0.2  # a subsample skips the full check at this share of stop_alpha (a stricter test)


def check_stages(sizes: Sequence[int], quick: int) -> list[tuple[str, tuple[int, ...]]]:
    """A check's stages, (name, records per set): half of ``quick`` ("far"; half the set when it is smaller),
    ``quick`` ("near"), then every record ("full"); each stage's records of a set are a prefix of the next
    stage's (a check that goes on to a larger stage scores only the records it adds).
    Stages that add nothing are dropped; ``quick`` = 0: the full check only."""
    out: list[tuple[str, tuple[int, ...]]] = []
    full = tuple(sizes)
    if quick > 0:
        for name, want in (("far", lambda n: (min(n, quick) + 1) // 2), ("near", lambda n: quick)):
            prev = out[-1][1] if out else (0,) * len(full)
            take = tuple(min(n, max(p, want(n))) for n, p in zip(full, prev, strict=True))
            if take not in (prev, full):
                out.append((name, take))
    return [*out, ("full", full)]


def utility_ratio_bounds(probs: np.ndarray, base: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """mean(probs) / mean(base) (the same records before and now) with one-sided bounds at ``alpha`` each
    (delta-method standard error of the ratio of paired means): (ratio, lower, upper)."""
    if not len(probs):
        return 1.0, -np.inf, np.inf
    ratio = float(probs.mean() / base.mean())
    se = float(np.std(probs - ratio * base, ddof=1) / (base.mean() * np.sqrt(len(probs)))) if len(probs) > 1 else 0.0
    z = float(stats.norm.ppf(1 - alpha))
    return ratio, ratio - z * se, ratio + z * se


def _overshot(v: Verdict) -> list[str]:
    """The scores that find the forget set significantly LESS likely than held-out data."""
    return [e.score for e in v.evidence if e.status == OVER_UNLEARNED]


def _excess(v: Verdict) -> list[float]:
    """Each score's AUC minus its target (AUC_retain, or 0.5)."""
    return [e.auc - (0.5 if e.retain_auc is None else e.retain_auc) for e in v.evidence]


def _noise(v: Verdict) -> float:
    """The widest one-sided interval of a score's separation: its bound minus its estimate. At or above the margin
    REMOVED is out of reach at this size whatever the separation (inf: a saturated AUC)."""
    return max(e.supported_margin - abs(e.separation) for e in v.evidence)


def _lead(e: ScoreEvidence) -> float:
    """How far a score's AUC interval lies above its target (AUC_retain, or 0.5), in AUC."""
    return e.auc_ci[0]


Part = tuple[list[dict[str, np.ndarray]], dict[str, float] | None]  # a stage's scores per set, and the extraction
# of its forget records (when the rule keeps its full checks' scores)


def returned_scores(result: UnlearnResult, kept: dict[int, KnownScores]) -> KnownScores | None:
    """What a full check of the stopping rule scored on the forget set with the very weights ``result``
    returns (the check it backed off to, or its last), recognised by `weights_fingerprint`; None when no full
    check saw them."""
    now = weights_fingerprint(result.model)
    return next((k for k in kept.values() if now is not None and k.weights == now), None)


class Stages:
    """A check's stages (`check_stages`) over one random order per set (forget, holdout, retain): each stage's
    records are a prefix of its set's order, tokenised at their first use, with the stage's level (a
    subsample's is ``QUICK_ALPHA_SHARE`` of ``stop_alpha``) and its relative interval width."""

    def __init__(self, sets: Sequence[Sequence[Record]], args: UnlearnArgs) -> None:
        self.sets = sets
        rng = random.Random(args.seed)
        self.orders = [rng.sample(range(len(x)), len(x)) for x in sets]
        self.stages = check_stages([len(x) for x in sets], args.quick_check)
        self.last = len(self.stages) - 1
        self.alphas = [args.stop_alpha * (QUICK_ALPHA_SHARE if i < self.last else 1.0)
                       for i in range(len(self.stages))]
        self.widths = [np.sqrt(1 / max(f, 1) + 1 / max(h, 1)) * stats.norm.ppf(1 - a / (2 * len(ONE_PASS_SCORES)))
                       for (_, (f, h, _)), a in zip(self.stages, self.alphas, strict=True)]
        self.made: dict[int, Prepared] = {}

    def name(self, i: int) -> str:
        return self.stages[i][0]

    def positions(self, i: int, s: int) -> list[int]:
        """Stage ``i``'s records of set ``s`` (positions in the set, stage order)."""
        return self.orders[s][: self.stages[i][1][s]]

    def added(self, i: int) -> list[list[int]]:
        """The positions (per set) stage ``i`` adds to the stage before it."""
        before = self.stages[i - 1][1] if i else (0,) * len(self.sets)
        return [o[b:e] for o, b, e in zip(self.orders, before, self.stages[i][1], strict=True)]

    def score_to(self, model: torch.nn.Module, tokenizer: Any, i: int, parts: list[Part],
                 extraction: bool) -> list[dict[str, np.ndarray]]:
        """Every score of stage ``i``'s records, per set (in stage order); ``parts``: what this check scored so
        far (extended here); ``extraction``: also the forget records' extraction, from the same pass."""
        for j in range(len(parts), i + 1):
            pos = self.added(j)
            records = [x[p] for x, ps in zip(self.sets, pos, strict=True) for p in ps]
            if j not in self.made:  # tokenised at its first use: every check scores the same records
                self.made[j] = prepare(records, tokenizer, max_length=max_length_of(model))
            table = score_records(model, tokenizer, records, list(ONE_PASS_SCORES), hits=extraction,
                                  prepared=self.made[j])
            cuts = np.cumsum([0, *(len(p) for p in pos)])
            n = len(pos[0])  # the forget records come first
            ext = (extraction_stats(table.logprobs.take(slice(0, n)))
                   if extraction and n and table.logprobs is not None else None)
            parts.append(([{k: v[cuts[s]:cuts[s + 1]] for k, v in table.scores.items()}
                           for s in range(len(self.sets))], ext))
        return [{k: np.concatenate([p[0][s][k] for p in parts[: i + 1]]) for k in ONE_PASS_SCORES}
                for s in range(len(self.sets))]


Decision = tuple[str | None, str, JsonObject]  # (reason to stop or None, message, the check's metrics)


def relearned_scores(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                     args: UnlearnArgs) -> Scores | None:
    """The relearning probe: a copy of ``model`` fine-tuned ``args.relearn_steps`` steps on half the people of
    ``forget`` (`split_for_relearning`, as the battery's attack), scored on the other half and on ``holdout``;
    None when ``forget`` has one person (nothing disjoint to relearn on)."""
    from unlearn.attacks.adversarial import relearn

    learn, measured = split_for_relearning(forget, args.seed)
    if not learn or not measured:
        return None
    copy = relearn(model, tokenizer, learn, steps=args.relearn_steps, lr=args.relearn_lr, seed=args.seed)
    return forget_holdout_scores(copy, tokenizer, measured, holdout)


class StoppingRule:
    """The stopping rule, on the CALIBRATION parts of the holdout and the retain evaluation set (the
    receipt's verdict uses the other parts; ``forget``: the monitored half of the request), by person on both
    sides, over every one-pass score. Stop when every score is within the margin of its target and no person
    stands out (the verdict's equivalence test, REMOVED: ``forget_undetectable``; INCONCLUSIVE goes on, unless
    REMOVED is out of reach at this size and the checks stopped coming closer: ``resolution_limit``, see
    `at_resolution`; never
    at the check before any step without a retain model, where a shift could explain the verdict); stop and back
    off to the best checkpoint when the forget set became significantly LESS likely by any score
    (``over_unlearned``; also while another score still finds it more likely: the steps that would bring that
    one down push the first further, and the check reports ``overshoot``) or retain utility fell more than
    ``max_utility_drop`` (``utility_drop``). With ``retain_model`` (trained
    without the forget set; scored once, here, or given as its ``retain_scores`` on ``forget`` and ``holdout``,
    see `forget_holdout_scores`) the target is the retain model's own separation: the test is on
    AUC - AUC_retain, as in the receipt's relative verdict. Reported per check: the AUC of each score,
    ``distance`` = max |AUC - target| (what the best checkpoint minimises, target 0.5 or AUC_retain) and
    ``utility_ok``.

    A check goes through the stages of `check_stages` (``args.quick_check`` records per set first), scoring
    only the records each stage adds, until one decides. A subsample stage decides "go on" when it alone already
    shows a score NOT REMOVED at a stricter level (``QUICK_ALPHA_SHARE`` of ``stop_alpha``), none OVER-UNLEARNED,
    and its retain utility is significantly inside the guard (`utility_ratio_bounds`): the full check would then
    almost surely go on too; it stops for ``utility_drop`` when its utility is significantly below the guard (same
    level). Every other decision is the full check's. A check starts at the smallest stage whose interval, predicted
    from the last check's (half-widths scale with sqrt(1/m + 1/n) and the level's z), would still lie above the
    target; the first check (before any step) starts at the smallest, and also scores the rest of the retain set
    once: the utility baseline.
    Skipped checks and full checks with every score more than ``QUICK_MARGIN`` above its target are reported
    ``far``: the best checkpoint among them is the latest, and any other check beats them. A skipped check
    whose lead (the subsample's lower bound) is still above ``QUICK_MARGIN`` asks to ``defer`` the next
    check: far from the target the checks come every 2 x ``eval_every`` steps.

    With ``args.relearn_probe`` a full check that would stop on REMOVED first runs the relearning probe
    (`probe`): it stops only when the monitored people the probe did not relearn on are REMOVED after relearning
    too (relative to the retain model relearned the same way: ``retain_model``, or its ``probe_reference``).

    ``kept``: filled with the forget set's scores and extraction at every full check (step -> `KnownScores`),
    for the receipt's "as is" attack on the weights the run returns (`returned_scores`)."""

    def __init__(self, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record], args: UnlearnArgs, retain_model: torch.nn.Module | None = None,
                 retain_scores: Scores | None = None, kept: dict[int, KnownScores] | None = None,
                 probe_reference: Scores | None = None) -> None:
        self.tokenizer, self.args, self.kept = tokenizer, args, kept
        self.retain_model, self.probed = retain_model, probe_reference
        self.forget, self.holdout, self.retain_eval = forget, holdout, retain_eval
        self.groups, self.people = group_labels(holdout), group_labels(forget)
        if retain_scores is None and retain_model is not None:
            retain_scores = forget_holdout_scores(retain_model, tokenizer, forget, holdout)
        self.reference = retain_scores  # the retain model's scores on (forget, holdout), or None
        self.stages = Stages((forget, holdout, retain_eval), args)
        self.base: np.ndarray | None = None  # every retain record's answer probability before any step (set order)
        self.begin = 0  # the stage the next check starts at (the schedule within a check)
        self.floor = 1 - args.max_utility_drop
        self.closest: float | None = None  # the closest INCONCLUSIVE full check's distance (resolution limit)
        self.since = 0  # full checks since it

    def __call__(self, model: torch.nn.Module, step: int) -> Decision:
        """One check: the subsample stages from ``begin`` until one decides, else the full check."""
        parts: list[Part] = []
        first = self.base is None
        for i in range(0 if first else self.begin, self.stages.last):
            decided = self.subsample(model, step, i, parts, first)
            if decided is not None:
                return decided
        return self.full_check(model, step, parts, first)

    def test(self, i: int, fm: dict[str, np.ndarray], hm: dict[str, np.ndarray], step: int) -> Verdict:
        """The verdict's test on stage ``i``: by person on both sides, as the receipt (a person is the unit,
        and one memorised person stops nothing), relative to the retain model when there is one."""
        fpos, hpos = self.stages.positions(i, 0), self.stages.positions(i, 1)
        ref = {"retain_members": {k: v[fpos] for k, v in self.reference[0].items()},
               "retain_nonmembers": {k: v[hpos] for k, v in self.reference[1].items()}} if self.reference else {}
        return two_sided_verdict(
            fm, hm, nonmember_groups=[self.groups[p] for p in hpos] if self.groups is not None else None,
            member_groups=[self.people[p] for p in fpos] if self.people is not None else None,
            alpha=self.stages.alphas[i], margin=self.args.margin, n_boot=400 if i < self.stages.last else 200,
            seed=step, **ref)

    def subsample(self, model: torch.nn.Module, step: int, i: int, parts: list[Part], first: bool) -> Decision | None:
        """Subsample stage ``i``: stop for utility when it is clearly lost even here; skip the rest of the check
        when a score already separates the sets at the stricter level, none overshoots and utility is clearly
        inside the guard (the full check would go on too); None: the next stage decides."""
        fm, hm, rm = self.stages.score_to(model, self.tokenizer, i, parts, self.kept is not None)
        v = self.test(i, fm, hm, step)
        probs = np.exp(rm["loss"])
        assert first or self.base is not None
        ratio, low, high = (1.0, 1.0, 1.0) if first or not len(probs) else utility_ratio_bounds(
            probs, self.base[self.stages.positions(i, 2)], self.stages.alphas[i])
        if high < self.floor:  # clearly lost even on the subsample: no full check needed
            self.begin = 0
            return ("utility_drop", f"retain utility fell to {ratio:.3f} x its value before any step on a "
                    f"{len(probs)}-record subsample (upper bound {high:.3f}; more than "
                    f"max_utility_drop={self.args.max_utility_drop:.0%})",
                    {"quick": self.stages.name(i), "status": v.status, "utility_ok": False, "retain_ratio": ratio})
        if v.status == NOT_REMOVED and low >= self.floor and not _overshot(v):
            if first:
                self.set_baseline(model, parts)
            lead = max(_lead(e) for e in v.evidence)
            self.begin = self.schedule(v, i)
            # no ``distance``: a subsample's is not comparable with the full checks' ("far" ranks it at back-off)
            return None, "", {"quick": self.stages.name(i), "far": True, "quick_lead": lead, "status": NOT_REMOVED,
                              "utility_ok": True, "defer": lead > QUICK_MARGIN}
        return None

    def full_check(self, model: torch.nn.Module, step: int, parts: list[Part], first: bool) -> Decision:
        """Every calibration record: the check's metrics, then `decide`."""
        last = self.stages.last
        fm, hm, rm = self.stages.score_to(model, self.tokenizer, last, parts, self.kept is not None)
        if first:
            self.set_baseline(model, parts)
        assert self.base is not None
        v = self.test(last, fm, hm, step)
        if len(self.forget):
            self.keep(model, step, fm, parts)
        m: JsonObject = {f"auc_{e.score}": e.auc for e in v.evidence}
        m["forget_auc"] = m["auc_loss"]
        excess = _excess(v)
        m["distance"] = max(abs(x) for x in excess)
        m["status"] = v.status
        if max(excess) > v.margin:  # the back-off restores such a check only when there is no other
            m["leaning"] = "NOT REMOVED"
        if _overshot(v):
            m["overshoot"] = _overshot(v)
        self.begin = self.schedule(v, last)
        if last:
            m["far"] = min(excess) > QUICK_MARGIN
        if len(self.retain_eval):
            m["retain_prob"] = float(np.exp(rm["loss"]).mean())
        m["utility_ok"] = "retain_prob" not in m or m["retain_prob"] >= self.floor * float(self.base.mean())
        reason, message = self.decide(v, m, first)
        if reason == "forget_undetectable" and self.args.relearn_probe:
            reason, message = self.probe(model, step, m, message)
        return reason, message, m

    def probe(self, model: torch.nn.Module, step: int, m: JsonObject, message: str) -> tuple[str | None, str]:
        """The relearning probe before a REMOVED stop (`relearned_scores`): stop only if the monitored people it
        did not relearn on are still REMOVED, relative to the retain model relearned the same way; else go on,
        with the check's ``distance`` the worse of the two (the back-off prefers what survives relearning)."""
        scores = relearned_scores(model, self.tokenizer, self.forget, self.stages.sets[1], self.args)
        if scores is None:
            m["relearned"] = "skipped"
            return "forget_undetectable", f"{message}; relearning probe skipped (one person monitored)"
        ref = self.probe_reference()
        measured = split_for_relearning(self.forget, self.args.seed)[1]
        v = two_sided_verdict(
            *scores, nonmember_groups=self.groups, member_groups=group_labels(measured), alpha=self.args.stop_alpha,
            margin=self.args.margin, n_boot=200, seed=step,
            **({"retain_members": ref[0], "retain_nonmembers": ref[1]} if ref is not None else {}))
        m["relearned"], m["relearned_distance"] = v.status, max(abs(x) for x in _excess(v))
        what = (f"after {self.args.relearn_steps} relearning steps on the other monitored people "
                f"({len(measured)} records measured): {v.status}, max |AUC - target| {m['relearned_distance']:.3f}")
        if v.status == REMOVED:
            return "forget_undetectable", f"{message}; still REMOVED {what}"
        m["distance"] = max(m["distance"], m["relearned_distance"])
        m["probe"] = what
        return None, ""

    def probe_reference(self) -> Scores | None:
        """The retain model's `relearned_scores` (computed once), or None without a retain model (target 0.5)."""
        if self.probed is None and self.retain_model is not None:
            self.probed = relearned_scores(self.retain_model, self.tokenizer, self.forget, self.stages.sets[1],
                                           self.args)
        if self.probed is None and self.reference is not None:
            raise ValueError("the relearning probe is relative to the retain model relearned the same way: pass "
                             "retain_model, or its relearned_scores as probe_reference")
        return self.probed

    def decide(self, v: Verdict, m: JsonObject, first: bool) -> tuple[str | None, str]:
        """The full check's decision: utility, then overshooting (any score), then equivalence; INCONCLUSIVE
        and NOT REMOVED go on, and so does the check before any step without a never-trained reference."""
        assert self.base is not None
        if not m["utility_ok"]:
            return ("utility_drop", f"retain utility fell to {m['retain_prob']:.3f} from {self.base.mean():.3f} "
                    f"(more than max_utility_drop={self.args.max_utility_drop:.0%})")
        if first and not self.reference:
            # before any step, without a never-trained reference, a separation either way may be a shift between
            # the sets (lengths, dates, authors) rather than membership: nothing to stop on yet
            m["unreferenced"] = True
            return None, ""
        over = _overshot(v)
        if v.status == OVER_UNLEARNED:
            return "over_unlearned", v.message
        if over:  # some score already finds the forget set LESS likely, another still more likely
            still = [e.score for e in v.evidence if e.status == NOT_REMOVED]
            return ("over_unlearned", f"OVER-UNLEARNED by {', '.join(over)} (the forget set now LESS likely "
                    f"than held-out data) while {', '.join(still)} still find{'s' if len(still) == 1 else ''} it more "
                    "likely: further steps only push the first further")
        m["margin"], m["bound"] = v.margin, v.bound if np.isfinite(v.bound) else None  # JSON has no infinity
        if v.status == REMOVED:  # equivalence, not mere non-rejection: INCONCLUSIVE goes on
            target = "AUC_retain" if self.reference else "0.5"
            return ("forget_undetectable", f"every score within +-{v.margin:.3f} of {target} on the monitored forget "
                    f"records vs the calibration holdout (equivalence; residual bound {v.bound:.3f}, max |AUC - "
                    f"{target}| {m['distance']:.3f}), no person standing out")
        return self.at_resolution(v, m)

    def at_resolution(self, v: Verdict, m: JsonObject) -> tuple[str | None, str]:
        """``resolution_limit``: REMOVED is out of reach at this size (a score's interval alone is wider than the
        margin) and ``resolution_patience`` full checks came no closer than the closest INCONCLUSIVE one (not
        ``leaning``: no score above its target by more than the margin): stop, backing off to it. A closer
        INCONCLUSIVE check starts the count again. Only with ``MARGIN_UNITS`` (10) or more monitored people (or
        records, without people): below, the closest of a few people's checks is mostly their noise (one person,
        the README's command: stopped at a check 0.06 from the target, LOSS AUC 0.14 above the retain model's on
        the judged records), and the rule goes on as before."""
        now, patience, noise = m["distance"], self.args.resolution_patience, _noise(v)
        units = len(set(self.people)) if self.people else len(self.forget)
        if not patience or units < MARGIN_UNITS or noise < v.margin:
            return None, ""
        if v.status == INCONCLUSIVE and not m.get("leaning") and (self.closest is None or now < self.closest):
            self.closest, self.since = now, 0
            return None, ""
        if self.closest is None:
            return None, ""
        self.since += 1
        if self.since < patience:
            return None, ""
        m["noise"] = noise if np.isfinite(noise) else None
        return ("resolution_limit", f"INCONCLUSIVE at the resolution of {units} monitored people: {patience} checks "
                f"no closer than the closest (max |AUC - target| {self.closest:.3f}, margin {v.margin:.3f}), and "
                f"REMOVED out of reach at this size (a score's interval alone is {noise:.3f} wide)")

    def schedule(self, v: Verdict, i: int) -> int:
        """Where the next check starts: the smallest stage whose interval, scaled from stage ``i``'s, would still
        lie above the target."""
        widths = self.stages.widths
        for j in range(self.stages.last):
            if any(_lead(e) + (e.auc_ci[1] - e.auc_ci[0]) / 2 * (1 - widths[j] / widths[i]) > 0 for e in v.evidence):
                return j
        return self.stages.last

    def set_baseline(self, model: torch.nn.Module, parts: list[Part]) -> None:
        """Retain utility before any step: the records this check scored, and the rest of the retain set."""
        order = self.stages.orders[2]
        seen = np.concatenate([np.exp(p[0][2]["loss"]) for p in parts])
        rest = order[len(seen):]
        more = np.exp(score_records(model, self.tokenizer, [self.retain_eval[p] for p in rest], ["loss"]
                                    ).scores["loss"]) if rest else np.zeros(0)
        self.base = np.empty(len(self.retain_eval))
        self.base[order] = np.concatenate([seen, more])

    def keep(self, model: torch.nn.Module, step: int, fm: dict[str, np.ndarray], parts: list[Part]) -> None:
        """The forget set's scores and extraction at this full check, for the receipt (`returned_scores`)."""
        found = [(ext, len(scored[0]["loss"])) for scored, ext in parts if ext is not None]
        if self.kept is None or sum(n for _, n in found) < len(self.forget):  # several processes: no extraction
            return
        back = np.argsort(self.stages.orders[0])  # stage order -> the forget set's own order
        ext = {k: sum(e[k] * n for e, n in found) / len(self.forget) for k in found[0][0]}
        self.kept[step] = KnownScores([r.id for r in self.forget], {k: v[back] for k, v in fm.items()}, ext,
                                      weights_fingerprint(model))


def make_monitor(tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record], args: UnlearnArgs,
                 retain_model: torch.nn.Module | None = None, retain_scores: Scores | None = None,
                 kept: dict[int, KnownScores] | None = None, probe_reference: Scores | None = None) -> Monitor:
    """The stopping rule (`StoppingRule`) as an unlearner's monitor."""
    return StoppingRule(tokenizer, forget, holdout, retain_eval, args, retain_model, retain_scores, kept,
                        probe_reference)
