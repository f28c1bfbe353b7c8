"""`audit`: is a member set still detectable in a model? Metrics per score and a verdict with p-values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from unlearn.attacks.runner import DEFAULT_SCORES, SCORES, ScoreTable, score_records
from unlearn.auditors.metrics import (
    auc,
    bootstrap_auc_ci,
    bootstrap_privleak_ci,
    holm,
    mann_whitney_p,
    privleak,
    tpr_at_fpr,
)
from unlearn.auditors.tofu import QAEval, evaluate_qa, forget_quality
from unlearn.auditors.verdict import CANNOT_JUDGE, NOT_REMOVED, OVER_UNLEARNED, presence, two_sided_verdict
from unlearn.config import Checked, arg
from unlearn.data import Record
from unlearn.errors import UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.splits import group_labels

EXCHANGEABILITY = ("The p-values are valid only if members and non-members are exchangeable (drawn from the "
                   "same distribution, e.g. people split at random); a length or date shift between the sets "
                   "is detected as 'membership' too.")


@dataclass(frozen=True)
class AuditArgs(Checked):
    scores: tuple[str, ...] = arg(DEFAULT_SCORES, "membership scores (see unlearn.attacks.runner.SCORES)")
    k: float = arg(0.4, "fraction of lowest tokens for Min-K% and Min-K%++", gt=0, le=1)
    alpha: float = arg(0.05, "significance level of the verdict", gt=0, lt=1)
    n_boot: int = arg(1000, "bootstrap resamples of the AUC CI", ge=10)
    seed: int = arg(0, "bootstrap seed", ge=0)
    batch_size: int = arg(32, "records per forward pass", ge=1)
    margin: float | None = arg(None, "equivalence margin (AUC): REMOVED / NOT DETECTABLE means every score within "
                               "+-margin of the never-trained (or chance) level; default: from the data, at most "
                               "0.10 for 10 or more people", gt=0, le=0.5)

    def extra_problems(self) -> list[str]:
        unknown = [s for s in self.scores if s not in SCORES]
        if unknown or not self.scores:
            return [f"key 'scores': unknown score(s) {', '.join(unknown) or '(none given)'}; "
                    f"known: {', '.join(SCORES.names())}"]
        return []


@dataclass
class ScoreResult:
    score: str
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    p_value: float
    p_holm: float
    detected: bool
    retain_auc: float | None = None
    privleak: float | None = None  # MUSE's, against the retain model
    privleak_ci: tuple[float, float] | None = None


@dataclass
class AuditReport:
    n_members: int
    n_nonmembers: int
    alpha: float
    results: list[ScoreResult]
    detected: bool
    verdict: str
    warnings: list[str]
    caveat: str = EXCHANGEABILITY
    forget_quality: float | None = None
    tofu: dict[str, dict[str, float]] = field(default_factory=dict)  # per-model QA summaries; "summary": TOFU's
    muse: dict[str, float] = field(default_factory=dict)  # MUSE's VerbMem / KnowMem / privleak
    removal: JsonObject = field(default_factory=dict)  # the two-sided verdict (verdict.Verdict)
    presence: str = ""  # PRESENT / NOT DETECTABLE / INCONCLUSIVE / OVER-UNLEARNED / CANNOT JUDGE (verdict.presence)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> JsonObject:
        return asdict(self)

    def result(self, score: str) -> ScoreResult:
        return next(r for r in self.results if r.score == score)


def _length_warning(members: np.ndarray, nonmembers: np.ndarray) -> str | None:
    from scipy import stats

    ratio = float(members.mean() / max(nonmembers.mean(), 1e-9))
    p = float(stats.mannwhitneyu(members, nonmembers, alternative="two-sided").pvalue)
    if p < 0.01 and not 0.8 <= ratio <= 1.25:
        return (f"members and non-members differ in length (mean {members.mean():.1f} vs {nonmembers.mean():.1f} "
                f"target tokens, p = {p:.1e}): detection may reflect length, not membership")
    return None




def group_means(values: np.ndarray, groups: list[str] | None) -> np.ndarray:
    if groups is None:
        return values
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    idx = np.array([index[g] for g in groups])
    return np.bincount(idx, weights=values) / np.bincount(idx)


def detection(members: np.ndarray, nonmembers: np.ndarray, name: str, args: AuditArgs,
              groups: tuple[list[str] | None, list[str] | None] = (None, None)) -> ScoreResult:
    """Record-level AUC, CI and TPRs; the p-value over group means when records come in groups
    (facts of one person are not independent, and a record-level test would overstate significance)."""
    p = mann_whitney_p(group_means(members, groups[0]), group_means(nonmembers, groups[1]))
    return ScoreResult(name, auc(members, nonmembers), bootstrap_auc_ci(members, nonmembers, n_boot=args.n_boot,
                                                                        seed=args.seed),
                       tpr_at_fpr(members, nonmembers, 0.01), tpr_at_fpr(members, nonmembers, 0.001), p, 1.0, False)


def audit(model: torch.nn.Module, tokenizer: Any, members: Sequence[Record], nonmembers: Sequence[Record],
          args: AuditArgs = AuditArgs(), *, reference: torch.nn.Module | None = None,
          retain_model: torch.nn.Module | None = None, tofu: bool = False,
          on_batch: Callable[[int], None] | None = None) -> AuditReport:
    """Score members and non-members (one pass each), test each score, and judge.

    ``retain_model`` (a model retrained without the members) adds privleak per score and, with
    ``tofu=True`` on QA records with perturbed answers, TOFU's forget quality. The verdict is relative to it, or
    else to ``reference`` (a model that never saw either set, e.g. the pre-fine-tuning base model: it removes a
    shift between the sets as well); with neither it is absolute, and says CANNOT JUDGE where a shift could
    explain it.
    """
    if not members:
        raise UnlearnError("the member set is empty: nothing to audit")
    if not nonmembers:
        raise UnlearnError("the non-member set is empty: a membership test needs non-members to compare with")
    overlap = {r.id for r in members} & {r.id for r in nonmembers}
    if overlap:
        raise UnlearnError(f"{len(overlap)} record id(s) are both member and non-member, e.g. '{sorted(overlap)[0]}'")
    scores = list(args.scores)
    kw = {"k": args.k, "reference": reference, "batch_size": args.batch_size, "on_batch": on_batch}
    mem, non = score_records(model, tokenizer, members, scores, **kw), score_records(model, tokenizer, nonmembers,
                                                                                     scores, **kw)
    ret: tuple[ScoreTable, ScoreTable] | None = None
    baseline = retain_model if retain_model is not None else reference  # never trained on the members
    if baseline is not None:
        one_pass = [s for s in scores if s not in ("reference",)]
        kw_r = {**kw, "reference": None}
        ret = (score_records(baseline, tokenizer, members, one_pass, **kw_r),
               score_records(baseline, tokenizer, nonmembers, one_pass, **kw_r))
    groups = (group_labels(members), group_labels(nonmembers))
    if (groups[0] is None) != (groups[1] is None):
        groups = (None, None)
    results = []
    for name in scores:
        m, n = mem.scores[name], non.scores[name]
        bad = [f"{label} '{ids[i]}'" for label, ids, v in (("member", mem.ids, m), ("non-member", non.ids, n))
               for i in np.flatnonzero(~np.isfinite(v))[:1]]
        if bad:
            raise UnlearnError(f"score '{name}' is NaN or infinite on {bad[0]}: the model's outputs are not finite")
        res = detection(m, n, name, args, groups)
        if retain_model is not None and ret is not None and name in ret[0].scores:
            res.retain_auc = auc(ret[0].scores[name], ret[1].scores[name])
            res.privleak = privleak(res.auc, res.retain_auc)
            res.privleak_ci = bootstrap_privleak_ci(m, n, ret[0].scores[name], ret[1].scores[name],
                                                    n_boot=args.n_boot, seed=args.seed)
        results.append(res)
    for res, p_adj in zip(results, holm([r.p_value for r in results])):
        res.p_holm = p_adj
    # The verdict is two-sided over the scores (relative to the retain model when one is given): see verdict.py
    names = [r.score for r in results if ret is None or r.score in ret[0].scores]
    removal = two_sided_verdict(
        {k: mem.scores[k] for k in names}, {k: non.scores[k] for k in names}, nonmember_groups=groups[1],
        member_groups=groups[0],
        retain_members={k: ret[0].scores[k] for k in names} if ret is not None else None,
        retain_nonmembers={k: ret[1].scores[k] for k in names} if ret is not None else None,
        alpha=args.alpha, margin=args.margin, n_boot=args.n_boot, seed=args.seed)
    shift = _length_warning(mem.lengths.astype(float), non.lengths.astype(float))
    word, verdict = presence(removal, shift)
    status = {e.score: e.status for e in removal.evidence}
    judged = word != CANNOT_JUDGE  # `detected`, the rows and --fail-if-detected say what the verdict says
    for res in results:
        res.detected = judged and status.get(res.score) in (NOT_REMOVED, OVER_UNLEARNED)
    detected = judged and removal.status in (NOT_REMOVED, OVER_UNLEARNED)
    warnings = [w for w in [shift] if w]
    if groups[0] is not None:
        warnings.append(f"records come in groups: p-values are over {len(set(groups[0]))} member groups vs "
                        f"{len(set(groups[1] or []))} non-member groups (group means), AUCs over records")
    report = AuditReport(len(members), len(nonmembers), args.alpha, results, detected, verdict, warnings,
                         removal=removal.to_dict(), presence=word,
                         scores={"members": {k: v.tolist() for k, v in mem.scores.items()},
                                 "nonmembers": {k: v.tolist() for k, v in non.scores.items()}})
    if tofu:
        evals: dict[str, QAEval] = {"model": evaluate_qa(model, tokenizer, members, rouge=False,
                                                         batch_size=args.batch_size)}
        if retain_model is not None:
            evals["retain"] = evaluate_qa(retain_model, tokenizer, members, rouge=False, batch_size=args.batch_size)
            report.forget_quality = forget_quality(evals["model"], evals["retain"])
        report.tofu = {k: v.summary() for k, v in evals.items()}
    return report
