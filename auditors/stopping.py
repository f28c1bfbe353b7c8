"""The stopping rule for unlearners (`make_monitor`) and the LOSS-only before/after check of receipts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from unlearn.attacks.runner import ONE_PASS_SCORES, score_records
from unlearn.auditors.audit import group_labels
from unlearn.auditors.battery import Scores, forget_holdout_scores
from unlearn.auditors.metrics import auc, mann_whitney_p
from unlearn.auditors.verdict import (
    INCONCLUSIVE,
    NOT_REMOVED,
    OVER_UNLEARNED,
    REMOVED,
    ScoreEvidence,
    two_sided_verdict,
)
from unlearn.data import Record
from unlearn.logprobs import Prepared, max_length_of, prepare
from unlearn.unlearner import Monitor, UnlearnArgs


def forget_check(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record]) -> dict[str, float]:
    """LOSS AUC and one-sided MWU p of forget vs holdout, and retain utility (mean answer probability)."""
    scored = score_records(model, tokenizer, [*forget, *holdout, *retain_eval], ["loss"])
    s = scored.scores["loss"]
    return check_from_scores(s[: len(forget)], s[len(forget): len(forget) + len(holdout)],
                             s[len(forget) + len(holdout):])


def check_from_scores(forget_loss: np.ndarray, holdout_loss: np.ndarray,
                      retain_loss: np.ndarray | None = None) -> dict[str, float]:
    """`forget_check` from LOSS scores already computed (e.g. by the attack battery)."""
    f, h = forget_loss, holdout_loss
    out = {"forget_auc": auc(f, h), "forget_p": mann_whitney_p(f, h), "forget_nll": float(-f.mean())}
    if retain_loss is not None and len(retain_loss):
        out["retain_prob"] = float(np.exp(retain_loss).mean())
    return out


QUICK_MARGIN = 0.2  # AUC above the target that is "far": a full check's every score (back-off ranking), or a
# skipped check's lower bound (the next check is deferred)
QUICK_ALPHA_SHARE = 0.2  # a quick check skips the full one at this share of stop_alpha (a stricter test)
QUICK_LEAD = 1.5  # after a full check, try a quick one next only if some score's lower CI bound is this many
# half-widths above its target (the subsample's interval is about 2.7x wider: below that it rarely skips)


def utility_ratio_bounds(probs: np.ndarray, base: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """mean(probs) / mean(base) (the same records before and now) with one-sided bounds at ``alpha`` each
    (delta-method standard error of the ratio of paired means): (ratio, lower, upper)."""
    if not len(probs):
        return 1.0, -np.inf, np.inf
    ratio = float(probs.mean() / base.mean())
    se = float(np.std(probs - ratio * base, ddof=1) / (base.mean() * np.sqrt(len(probs)))) if len(probs) > 1 else 0.0
    z = float(stats.norm.ppf(1 - alpha))
    return ratio, ratio - z * se, ratio + z * se


def _lead(e: ScoreEvidence) -> float:
    """How far a score's interval lies above its target (0 relative to a retain model, else AUC 0.5)."""
    return e.ci[0] - (0.0 if e.retain_auc is not None else 0.5)


def make_monitor(tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record], args: UnlearnArgs,
                 retain_model: torch.nn.Module | None = None, retain_scores: Scores | None = None) -> Monitor:
    """The stopping rule, on the CALIBRATION parts of the holdout and the retain evaluation set (the
    receipt's verdict uses the other parts): two-sided over every one-pass score. Stop when no score
    separates the forget set from held-out data in either direction (``forget_undetectable``); stop and back
    off to the best checkpoint when the forget set became significantly LESS likely (``over_unlearned``) or
    retain utility fell more than ``max_utility_drop`` (``utility_drop``). With ``retain_model`` (trained
    without the forget set; scored once, here, or given as its ``retain_scores`` on ``forget`` and ``holdout``,
    see `forget_holdout_scores`) the target is the retain model's own separation: the test is on
    AUC - AUC_retain, as in the receipt's relative verdict. Reported per check: the AUC of each score,
    ``distance`` = max |AUC - target| (what the best checkpoint minimises, target 0.5 or AUC_retain) and
    ``utility_ok``.

    With ``args.quick_check`` > 0 a check may first score a fixed subsample of that many records per set and
    skip the full check when the subsample alone already shows a score NOT REMOVED, at a stricter level
    (``QUICK_ALPHA_SHARE`` of ``stop_alpha``) and its retain utility significantly inside the guard
    (`utility_ratio_bounds`): the full check, with more records, would then almost surely go on too. Only a
    full check stops, or a quick one whose retain utility is significantly below the guard (``utility_drop``,
    at the same level). A quick check is tried after a skip, and after a full check whose clearest NOT
    REMOVED score leads by ``QUICK_LEAD`` half-widths (otherwise the subsample would rarely skip, and cost a
    third of a full check for nothing). The first check (before any step) is a quick one too, plus the retain set
    for the utility baseline.
    Skipped checks and full checks with every score more than ``QUICK_MARGIN`` above its target are reported
    ``far``: the best checkpoint among them is the latest, and any other check beats them. A skipped check
    whose lead (the subsample's lower bound) is still above ``QUICK_MARGIN`` asks to ``defer`` the next
    check: far from the target the checks come every 2 x ``eval_every`` steps, and the next one first tries
    half the subsample (``"quick": "far"``; then the whole subsample, ``"near"``, then the full check: each
    only when the smaller one could not skip)."""
    groups = group_labels(holdout)
    baseline: dict[str, float] = {}
    nf, nh = len(forget), len(holdout)
    reference: dict[str, Any] = {}
    if retain_scores is None and retain_model is not None:
        retain_scores = forget_holdout_scores(retain_model, tokenizer, forget, holdout)
    if retain_scores is not None:
        reference = {"retain_members": retain_scores[0], "retain_nonmembers": retain_scores[1]}
    rng = random.Random(args.seed)
    picks = [sorted(rng.sample(range(n), args.quick_check)) if 0 < args.quick_check < n else list(range(n))
             for n in (nf, nh, len(retain_eval))]
    quick_on = any(len(p) < n for p, n in zip(picks, (nf, nh, len(retain_eval)), strict=True))
    halves = [sorted(rng.sample(range(len(p)), (len(p) + 1) // 2)) for p in picks]  # the far check's share
    quick_base: np.ndarray | None = None  # the subsample's retain answer probabilities at the first check
    try_quick, far_next = quick_on, False
    full_records = [*forget, *holdout, *retain_eval]

    def subsample(positions: Sequence[Sequence[int]]) -> dict[str, Any]:
        """A quick check's records (positions into ``picks`` per set), their groups and retain-model scores."""
        qf, qh, qr = ([p[i] for i in pos] for p, pos in zip(picks, positions, strict=True))
        return {"records": [*(forget[i] for i in qf), *(holdout[i] for i in qh), *(retain_eval[i] for i in qr)],
                "sizes": (len(qf), len(qf) + len(qh)), "retain_pos": list(positions[2]),
                "groups": [groups[i] for i in qh] if groups is not None else None,
                "reference": {"retain_members": {k: v[qf] for k, v in reference["retain_members"].items()},
                              "retain_nonmembers": {k: v[qh] for k, v in reference["retain_nonmembers"].items()}
                              } if reference else {}}

    stages = {"near": subsample([range(len(p)) for p in picks]), "far": subsample(halves)}
    made: dict[str, Prepared] = {}

    def batches(kind: str, model: torch.nn.Module) -> Prepared:
        """A check's records, tokenised at its first use: every check of a kind scores the same."""
        if kind not in made:
            made[kind] = prepare(stages[kind]["records"] if kind in stages else full_records, tokenizer,
                                 max_length=max_length_of(model))
        return made[kind]

    def quick(model: torch.nn.Module, step: int, kind: str) -> dict[str, Any]:
        """The subsample's verdict at the stricter level, and its retain utility."""
        sub = stages[kind]
        t = score_records(model, tokenizer, sub["records"], list(ONE_PASS_SCORES), prepared=batches(kind, model)).scores
        a, b = sub["sizes"]
        v = two_sided_verdict({k: x[:a] for k, x in t.items()}, {k: x[a:b] for k, x in t.items()},
                              nonmember_groups=sub["groups"], alpha=args.stop_alpha * QUICK_ALPHA_SHARE, n_boot=400,
                              seed=step, **sub["reference"])
        return {"status": v.status, "lead": max(_lead(e) for e in v.evidence), "retain_probs": np.exp(t["loss"][b:])}

    def monitor(model: torch.nn.Module, step: int) -> tuple[str | None, str, dict[str, Any]]:
        nonlocal quick_base, try_quick, far_next
        for kind in (["far", "near"] if far_next else ["near"]) if try_quick else []:
            q = quick(model, step, kind)
            first = quick_base is None
            if quick_base is None:
                quick_base = q["retain_probs"]
            ratio, low, high = utility_ratio_bounds(q["retain_probs"], quick_base[stages[kind]["retain_pos"]],
                                                    args.stop_alpha * QUICK_ALPHA_SHARE)
            if high < 1 - args.max_utility_drop:  # clearly lost even on the subsample: no full check needed
                far_next = False
                return ("utility_drop", f"retain utility fell to {ratio:.3f} x its value before any step on a "
                        f"{len(q['retain_probs'])}-record subsample (upper bound {high:.3f}; more than "
                        f"max_utility_drop={args.max_utility_drop:.0%})",
                        {"quick": kind, "status": q["status"], "utility_ok": False, "retain_ratio": ratio})
            if q["status"] == NOT_REMOVED and (first or low >= 1 - args.max_utility_drop):
                if first and len(retain_eval):  # the full checks' utility baseline: the whole retain set, once
                    lp = score_records(model, tokenizer, retain_eval, ["loss"]).scores["loss"]
                    baseline["retain_prob"] = float(np.exp(lp).mean())
                far_next = q["lead"] > QUICK_MARGIN
                # a score separates the sets even on the subsample: the full check would go on too (no
                # ``distance``: a subsample's is not comparable with the full checks'; "far" ranks it)
                return None, "", {"quick": kind, "far": True, "quick_lead": q["lead"], "status": NOT_REMOVED,
                                  "utility_ok": True, "defer": far_next}
        far_next = False
        table = score_records(model, tokenizer, full_records, list(ONE_PASS_SCORES), prepared=batches("full", model))
        fm = {k: v[:nf] for k, v in table.scores.items()}
        hm = {k: v[nf:nf + nh] for k, v in table.scores.items()}
        # record level on the forget side: a target to stop at, also for a one-person request (the claim
        # itself is the receipt's verdict, grouped or relative to a retain model)
        v = two_sided_verdict(fm, hm, nonmember_groups=groups, alpha=args.stop_alpha, n_boot=200, seed=step,
                              **reference)
        m: dict[str, Any] = {f"auc_{e.score}": e.auc for e in v.evidence}
        m["forget_auc"] = m["auc_loss"]
        excess = [e.auc - (0.5 if e.retain_auc is None else e.retain_auc) for e in v.evidence]
        m["distance"] = max(abs(x) for x in excess)
        m["status"] = v.status
        try_quick = quick_on and any(_lead(e) > QUICK_LEAD * (e.ci[1] - e.ci[0]) / 2 for e in v.evidence)
        if quick_on:
            m["far"] = min(excess) > QUICK_MARGIN
        retain_lp = table.scores["loss"][nf + nh:]
        if len(retain_lp):
            m["retain_prob"] = float(np.exp(retain_lp).mean())
        if not baseline:
            baseline.update({k: x for k, x in m.items() if isinstance(x, float)})
        m["utility_ok"] = "retain_prob" not in m or m["retain_prob"] >= (1 - args.max_utility_drop) * baseline[
            "retain_prob"]
        if not m["utility_ok"]:
            return ("utility_drop", f"retain utility fell to {m['retain_prob']:.3f} from {baseline['retain_prob']:.3f} "
                    f"(more than max_utility_drop={args.max_utility_drop:.0%})", m)
        if v.status == OVER_UNLEARNED:
            return "over_unlearned", v.message, m
        if v.status in (REMOVED, INCONCLUSIVE):
            target = "AUC_retain" if reference else "0.5"
            return ("forget_undetectable", f"no score separates the forget set from the calibration holdout "
                    f"(max |AUC - {target}| {m['distance']:.3f}; {v.status.lower()} at this size)", m)
        return None, "", m

    return monitor
