"""Removal verdicts: significance tests for NOT REMOVED / OVER-UNLEARNED, an equivalence test for REMOVED.

Four outcomes, one decision (`decide`), statistics per score (higher score = member):

- NOT REMOVED: some score finds the forget set significantly MORE likely than held-out data (beyond what the
  never-trained retain model shows, when one is given), or some forget PERSON does (the per-person max test:
  one memorised person among twenty is named, by id, and cannot hide in the average);
- OVER-UNLEARNED: the same, significantly LESS likely (an attacker spots the set the other way);
- REMOVED: an equivalence test. For EVERY score the (1 - 2 alpha) interval of the separation (AUC - 0.5, or
  AUC - AUC_retain) lies inside +-margin: two one-sided tests (TOST) per score, and since REMOVED needs all of
  them (an intersection-union test) no multiplicity correction is due on this side. The verdict states the
  margin and the upper bound of the residual separation (the smallest margin the data would support);
- INCONCLUSIVE: neither, with the margin the data could support and the people it would need.

The margin. Unless given, it comes from the data: what two never-trained models of the same recipe differ by
on a set of this size, 1.96 x (the spread of the set-level statistic between never-trained models), clipped to
[`MARGIN_FLOOR`, cap], the cap being `MARGIN_CAP` (0.10 AUC) for 10 units (people, or records when there are
no people) or more and `MARGIN_CAP_FEW` below. With held-out people the spread is measured on them (their
placebo statistics below); otherwise it is the test's own standard error.

Paths:
1. relative to a retain model, records in people on both sides (the receipt's main path): each forget person's
   record-level AUC against the held-out records, minus the retain model's, d_g = AUC_u(g) - AUC_r(g); each
   held-out person gets the same statistic against the other held-out people (leave one person out): the
   "placebo" people, whose d shows how far two models that never saw a person disagree about it (seed, data
   order). Significance: a pooled two-sample t-test of the forget people's d against the placebo people's,
   also on each person's mean log(NLL) shift (LOSS, zlib, Min-K%: `log_nll`), which does not saturate at
   AUC 1, nor where the retain model already finds the person easy. Min-K%++ (`HEAVY_TAILED`) flags no
   person and is tested only for HEAVY_TAILED_PEOPLE forget people or more. Critical values are joint over
   the scores (their correlation, `max_t_quantile`).
   Equivalence: TOST on the mean of the forget people's d (the placebo mean is zero by construction for people
   of equal size: the held-out people's leave-one-out AUCs average 0.5 under any model), standard error from
   the forget people's own spread (or the pooled one, whichever is larger). Per person: each forget person's
   d (and shift) against the placebo distribution, t = (d_g - mean_p) / (sd_p sqrt(1 + 1/n)) ~ t_{n-1},
   with a critical value joint over the statistics at level PERSON_ALPHA_SHARE x alpha / (forget people).
2. without people on both sides: records are the unit (or forget people, when several), held-out data by
   person when known; a bootstrap of AUC (- AUC_retain, paired) with t critical values when a side has fewer
   than 30 units, and the same for the mean log(NLL) shift; an AUC at 0 or 1 for both models cannot tell (its
   interval would have width 0): it never supports REMOVED, the mean shift decides significance.
3. absolute (no retain model), people on both sides: a Mann-Whitney test over person means, TOST on that AUC
   with the Hanley-McNeil standard error (never below the null one).

Assumptions, said in every report: without a retain model the test is valid only when forget and held-out
records are exchangeable (people split at random); a relative verdict removes a shift both models see.
Multiplicity: alpha is the family level of one verdict over its scores and persons (`two_sided_verdict`);
the battery divides it over its attacks (`equivalence_alpha` stays whole: REMOVED is an intersection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from unlearn.auditors.metrics import auc, block_bootstrap_counts, weighted_aucs
from unlearn.jsonio import JsonObject

REMOVED, NOT_REMOVED, OVER_UNLEARNED, INCONCLUSIVE = "REMOVED", "NOT REMOVED", "OVER-UNLEARNED", "INCONCLUSIVE"
SEVERITY = {NOT_REMOVED: 3, OVER_UNLEARNED: 2, INCONCLUSIVE: 1, REMOVED: 0}
PERSON_ALPHA_SHARE = 0.25  # of a verdict's alpha, for the per-person max test (the set-level tests keep the rest)
SHIFT_ALPHA_SHARE = 0.2  # of the set-level alpha, for the mean-shift tests (the AUC tests keep the rest)
# The scores whose group means are tested too: averages of token log-probs (<= 0), tested on the log of the
# negative log-likelihood (`log_nll`). Min-K%++ divides by the spread of the next-token distribution, so its
# record scores are heavy-tailed and a group mean is not a stable statistic.
SHIFT_SCORES = ("loss", "zlib", "mink")
# Scores whose per-person statistic is heavy-tailed between two never-trained models. Min-K%++ on the default
# benchmark (two seeds of the retain recipe, 60 people neither saw; placebo t-test at nominal 1%): 3.1x the
# nominal false alarms for one person, 1.6x for 5, 1.2x for 10, 0.7x for 20; LOSS and Min-K% 0.2-1.1x. So
# no person is flagged by them, and their set-level significance tests need HEAVY_TAILED_PEOPLE forget people
# (a mean over people is nearer normal). They still bound REMOVED, which needs every score.
HEAVY_TAILED = ("minkpp",)
HEAVY_TAILED_PEOPLE = 10
NLL_FLOOR = 1e-4  # nats per token: closer to zero than this is verbatim recall, whatever the digits
MARGIN_FLOOR, MARGIN_CAP, MARGIN_CAP_FEW, MARGIN_UNITS = 0.05, 0.10, 0.20, 10
SMALL_SAMPLE = 30  # units per side below which critical values are t, not normal
POWER = 0.8


def default_margin(spread: float, units: int) -> float:
    """The equivalence margin (AUC) when none is given: 1.96 x ``spread`` (how far two never-trained models'
    set-level statistics differ, one standard deviation), clipped to [MARGIN_FLOOR, cap]; the cap is
    MARGIN_CAP for ``units`` >= MARGIN_UNITS, MARGIN_CAP_FEW below."""
    cap = MARGIN_CAP if units >= MARGIN_UNITS else MARGIN_CAP_FEW
    return float(min(cap, max(MARGIN_FLOOR, stats.norm.ppf(0.975) * spread)))


def units_needed(unit_sd: float, margin: float, alpha: float, n_scores: int = 1, power: float = POWER) -> int | None:
    """Units (people) for the equivalence test to say REMOVED with ``power`` when the true separation is 0, on
    ``n_scores`` scores that must all pass (each at power 1 - (1 - power) / n_scores, TOST at zero:
    margin >= (z_{1-alpha} + z_{1-beta/2}) sd / sqrt(k)); None when the spread is unknown."""
    if not unit_sd > 0 or not margin > 0:
        return None
    beta = (1 - power) / n_scores
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(1 - beta / 2)
    return max(2, math.ceil((z * unit_sd / margin) ** 2))


@dataclass(frozen=True)
class MeanTest:
    """An estimate with its standard error and degrees of freedom (inf: normal): the two-sided interval for
    significance and the one-sided bounds of an equivalence test (TOST). H0 of TOST: |true| >= margin."""

    estimate: float
    se: float
    df: float = math.inf

    def quantile(self, p: float) -> float:
        return float(stats.norm.ppf(p) if math.isinf(self.df) else stats.t.ppf(p, self.df))

    def interval(self, alpha: float, critical: float | None = None) -> tuple[float, float]:
        q = self.quantile(1 - alpha / 2) if critical is None else critical
        return self.estimate - q * self.se, self.estimate + q * self.se

    def supported_margin(self, alpha: float) -> float:
        """The smallest margin TOST at ``alpha`` accepts: |estimate| + t_{1-alpha} se (the upper bound of the
        residual separation at confidence 1 - alpha)."""
        return abs(self.estimate) + self.quantile(1 - alpha) * self.se

    def tost_pvalue(self, margin: float) -> float:
        if self.se == 0:
            return 0.0 if abs(self.estimate) < margin else 1.0
        dist = stats.norm if math.isinf(self.df) else stats.t(self.df)
        return float(max(dist.sf((self.estimate + margin) / self.se), dist.cdf((self.estimate - margin) / self.se)))


# ---------------------------------------------------------------- per-person statistics

def group_aucs(scores: np.ndarray, blocks: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Each group's record-level AUC against all ``reference`` scores (ties count one half)."""
    ref = np.sort(reference)
    pos = (np.searchsorted(ref, scores, "left") + np.searchsorted(ref, scores, "right")) / 2
    return np.array([pos[b].mean() / len(ref) for b in blocks])


def leave_one_group_out_aucs(scores: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Each group's record-level AUC against the records of the other groups."""
    out = []
    for b in blocks:
        rest = np.ones(len(scores), bool)
        rest[b] = False
        out.append(group_aucs(scores[b], [np.arange(len(b))], scores[rest])[0])
    return np.array(out)


def log_nll(scores: np.ndarray, name: str) -> np.ndarray:
    """A log-probability score (<= 0, higher = member) on the scale of its mean-shift test: -log(-score), the
    negative log-likelihood floored at `NLL_FLOOR`. Memorisation drives the NLL towards zero by a factor, so on
    this scale a memorised person (NLL 1e-3 where a never-seen one has 2) stands out by log(2000) = 7.6, while
    in nats it moves by at most the 2 the never-trained model already had (people it finds easy hide there);
    between two never-trained models the statistic is also less heavy-tailed than in nats."""
    if scores.size and scores.max() > 1e-6:
        raise ValueError(f"score {name!r} must be a log-probability (<= 0) for its mean-shift test; "
                         f"got {scores.max():.3g}")
    return -np.log(np.maximum(-scores, NLL_FLOOR))


def group_mean_shifts(scores: np.ndarray, blocks: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Each group's mean score minus the mean of ``reference``: unlike an AUC it does not saturate, so a
    memorised group (every record far above every held-out one) stands out by how far, not just by order."""
    return np.array([scores[b].mean() for b in blocks]) - reference.mean()


def leave_one_group_out_shifts(scores: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Each group's mean score minus the mean of the other groups' records."""
    total, n = scores.sum(), len(scores)
    return np.array([scores[b].mean() - (total - scores[b].sum()) / (n - len(b)) for b in blocks])


def placebo_t_test(d_members: np.ndarray, d_placebo: np.ndarray, level: float,
                   critical: float | None = None) -> tuple[float, tuple[float, float], float]:
    """Pooled two-sample t-test of the members' per-group statistics against the placebo groups' (the null
    distribution): (mean difference, its two-sided interval at ``level`` (or +- ``critical`` standard errors),
    the pooled standard deviation)."""
    k, n = len(d_members), len(d_placebo)
    dof = k + n - 2
    ss = ((d_members - d_members.mean()) ** 2).sum() + ((d_placebo - d_placebo.mean()) ** 2).sum()
    sd = math.sqrt(ss / dof)
    se = sd * math.sqrt(1 / k + 1 / n)
    diff = float(d_members.mean() - d_placebo.mean())
    q = float(stats.t.ppf(1 - level / 2, dof)) if critical is None else critical
    return diff, (diff - q * se, diff + q * se), sd


def max_t_quantile(residuals: np.ndarray, dof: float, alpha: float, draws: int = 20000, seed: int = 0) -> float:
    """The 1 - ``alpha`` quantile of max_s |T_s|, T a multivariate t (``dof``) whose correlation is that of the
    rows of ``residuals`` ([statistics, units]); capped by Bonferroni's (the scores of one model are strongly
    correlated, so this is well below it)."""
    k = len(residuals)
    bonferroni = float(stats.t.ppf(1 - alpha / (2 * k), dof))
    if k == 1 or (residuals.std(axis=1) == 0).any():
        return bonferroni
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(k), np.corrcoef(residuals), draws, method="eigh")
    t = np.abs(z) / np.sqrt(rng.chisquare(dof, draws) / dof)[:, None]
    return min(float(np.quantile(t.max(axis=1), 1 - alpha)), bonferroni)


def joint_critical_value(pairs: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float, draws: int = 20000,
                         seed: int = 0) -> float:
    """The critical |t| for the placebo t-tests of several scores at family level ``alpha``."""
    resid = np.stack([np.concatenate([a - a.mean(), b - b.mean()]) for a, b in pairs])
    return max_t_quantile(resid, len(pairs[0][0]) + len(pairs[0][1]) - 2, alpha, draws, seed)


# ---------------------------------------------------------------- results

@dataclass
class ScoreEvidence:
    score: str
    auc: float
    ci: tuple[float, float]  # the significance interval of the statistic (AUC, dAUC or a mean shift)
    statistic: str  # what ``ci`` is an interval of
    retain_auc: float | None
    separation: float  # AUC - 0.5, or AUC - AUC_retain (per person, mean over the forget people)
    supported_margin: float  # the smallest margin its equivalence test accepts (inf: the AUC cannot tell)
    status: str
    auc_ci: tuple[float, float] = (0.0, 0.0)  # the significance interval of ``separation`` (AUC units)


@dataclass
class PersonFlag:
    """A forget person (by id, never by text) whose own statistic lies beyond the per-person critical value."""

    person: str
    score: str  # the score, or "log-NLL shift (<score>)"
    t: float
    direction: str  # NOT_REMOVED or OVER_UNLEARNED


@dataclass
class Verdict:
    status: str
    message: str
    alpha: float
    margin: float  # REMOVED means: every score within +-margin AUC of the never-trained (or chance) level
    bound: float  # the upper bound of the residual separation: the largest supported margin over the scores
    members: int
    nonmember_groups: int
    relative: bool
    evidence: list[ScoreEvidence] = field(default_factory=list)
    attack: str = "none"
    people: list[PersonFlag] = field(default_factory=list)
    spread: float = 0.0  # one sd of the set-level statistic between never-trained models, at this size
    needed: int | None = None  # forget units the equivalence test would need at ``margin`` (INCONCLUSIVE)
    unit: str = "records"

    def to_dict(self) -> JsonObject:
        """As JSON has it: an unbounded separation (a saturated AUC) and an unknown spread are null."""
        return _finite(asdict(self))


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_finite(v) for v in x)
    return x


@dataclass
class _Evidence:
    """What one path found: per-score evidence, flagged people, the spread and the per-unit sd."""

    scores: list[ScoreEvidence]
    people: list[PersonFlag]
    spread: float
    unit_sd: float
    units: int
    unit: str


def _group_index(groups: Sequence[str] | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    return [np.array(v) for v in by.values()]


def _status(lo: float, hi: float) -> str | None:
    return NOT_REMOVED if lo > 0 else OVER_UNLEARNED if hi < 0 else None


# ---------------------------------------------------------------- the three paths

def _equivalence(d_forget: np.ndarray, d_placebo: np.ndarray, pooled: float) -> tuple[MeanTest, float]:
    """TOST statistic on the forget people's mean d (minus the placebo mean, zero for people of equal size),
    standard error from the larger of the forget people's own spread and the ``pooled`` one (`placebo_t_test`'s):
    (test, unit sd)."""
    k, n = len(d_forget), len(d_placebo)
    own = float(d_forget.std(ddof=1)) if k >= 3 else 0.0
    sd, df = (own, k - 1) if own > pooled else (pooled, max(1, k + n - 2))
    return MeanTest(float(d_forget.mean() - d_placebo.mean()), sd / math.sqrt(k), df), sd


def person_flags(stats_by_label: Mapping[str, tuple[np.ndarray, np.ndarray]], people: Sequence[str],
                 alpha: float, seed: int = 0) -> list[PersonFlag]:
    """The per-person max test: each forget person's statistic (``label -> (forget people's, placebo people's)``)
    against the placebo distribution, t_g = (d_g - mean_p) / (sd_p sqrt(1 + 1/n)) ~ t_{n-1} under H0 (the person
    is like a never-seen one), max over the statistics with their correlation, at level ``alpha`` / people
    (familywise over the request's people). Returns the flagged (person, statistic) pairs."""
    first = next(iter(stats_by_label.values()))
    k, n = len(first[0]), len(first[1])
    if n < 3:
        return []
    resid = np.stack([p - p.mean() for _, p in stats_by_label.values()])
    critical = max_t_quantile(resid, n - 1, alpha / k, seed=seed)
    flags = []
    for label, (f, p) in stats_by_label.items():
        scale = float(p.std(ddof=1)) * math.sqrt(1 + 1 / n)
        off = f - p.mean()
        t = off / scale if scale > 0 else np.sign(off) * np.where(np.abs(off) > 1e-12, np.inf, 0.0)
        for g in np.flatnonzero(np.abs(t) > critical):
            flags.append(PersonFlag(people[g], label, float(t[g]), NOT_REMOVED if t[g] > 0 else OVER_UNLEARNED))
    return flags


def _placebo_path(u: tuple[Mapping, Mapping], r: tuple[Mapping, Mapping], member_blocks: list[np.ndarray],
                  blocks: list[np.ndarray], people: list[str], alpha: float, eq_alpha: float,
                  seed: int) -> _Evidence:
    """Path 1: relative, people on both sides (see the module docstring)."""
    names, k, n = list(u[0]), len(member_blocks), len(blocks)
    d: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shift: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    aucs: dict[str, tuple[float, float]] = {}  # record-level AUC of the model and of the retain model
    for s in names:
        mu, nu, mr, nr = (np.asarray(x[s], float) for x in (*u, *r))
        aucs[s] = auc(mu, nu), auc(mr, nr)
        d[s] = (group_aucs(mu, member_blocks, nu) - group_aucs(mr, member_blocks, nr),
                leave_one_group_out_aucs(nu, blocks) - leave_one_group_out_aucs(nr, blocks))
        if s in SHIFT_SCORES:
            lmu, lnu, lmr, lnr = (log_nll(x, s) for x in (mu, nu, mr, nr))
            shift[s] = (group_mean_shifts(lmu, member_blocks, lnu) - group_mean_shifts(lmr, member_blocks, lnr),
                        leave_one_group_out_shifts(lnu, blocks) - leave_one_group_out_shifts(lnr, blocks))
    tested = [s for s in names if s not in HEAVY_TAILED or k >= HEAVY_TAILED_PEOPLE]
    set_alpha = alpha * (1 - PERSON_ALPHA_SHARE)
    crit = joint_critical_value([d[s] for s in tested], set_alpha * (1 - SHIFT_ALPHA_SHARE), seed=seed)
    shift_crit = joint_critical_value(list(shift.values()), set_alpha * SHIFT_ALPHA_SHARE, seed=seed) if shift else 0
    out, unit_sds = [], []
    for s in names:
        diff, (lo, hi), pooled = placebo_t_test(*d[s], set_alpha, critical=crit)
        auc_ci = (lo, hi)
        stat = f"person dAUC {diff:+.3f} vs {n} held-out people"
        if s not in tested:  # reported, not tested: too few people for a heavy-tailed score
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            stat += f" (heavy-tailed: tested from {HEAVY_TAILED_PEOPLE} people)"
        if s in shift:
            sdiff, (slo, shi), _ = placebo_t_test(*shift[s], set_alpha, critical=shift_crit)
            if _status(lo, hi) is None and _status(slo, shi) is not None:  # beyond what a saturated AUC shows
                stat, lo, hi = f"person log-NLL shift ({s}) {sdiff:+.3g} vs {n} held-out people", slo, shi
        eq, unit_sd = _equivalence(*d[s], pooled)
        unit_sds.append(unit_sd)
        out.append(ScoreEvidence(s, aucs[s][0], (lo, hi), stat, aucs[s][1], eq.estimate,
                                 eq.supported_margin(eq_alpha), _status(lo, hi) or "", auc_ci))
    flags = person_flags({**{s: v for s, v in d.items() if s not in HEAVY_TAILED},
                          **{f"log-NLL shift ({s})": v for s, v in shift.items()}}, people,
                         alpha * PERSON_ALPHA_SHARE, seed)
    spread = max(float(np.std(p, ddof=1)) for _, p in d.values()) / math.sqrt(k) if n > 1 else math.inf
    return _Evidence(out, flags, spread, max(unit_sds), k, "people")


def _bootstrap_path(u: tuple[Mapping, Mapping], r: tuple[Mapping, Mapping] | None, member_units: list[np.ndarray],
                    blocks: list[np.ndarray], alpha: float, eq_alpha: float, n_boot: int, seed: int) -> _Evidence:
    """Path 2: a block bootstrap of AUC (- AUC_retain, paired over the same draws) and of the log(NLL) shift; t
    critical values under SMALL_SAMPLE units a side; a saturated AUC (0 or 1 for both models) never supports
    REMOVED."""
    names = list(u[0])
    m, n = len(next(iter(u[0].values()))), len(next(iter(u[1].values())))
    rng = np.random.default_rng(seed)
    cm, cn = block_bootstrap_counts(rng, member_units, m, n_boot), block_bootstrap_counts(rng, blocks, n, n_boot)
    units = min(len(member_units), len(blocks))
    df = max(1, units - 1) if units < SMALL_SAMPLE else math.inf
    level = alpha / len(names)
    out, ses = [], []
    for s in names:
        mu, nu = np.asarray(u[0][s], float), np.asarray(u[1][s], float)
        point, boot, ref = auc(mu, nu), weighted_aucs(mu, nu, cm, cn), None
        if r is not None:
            mr, nr = np.asarray(r[0][s], float), np.asarray(r[1][s], float)
            ref = auc(mr, nr)
            boot = boot - weighted_aucs(mr, nr, cm, cn)
        test = MeanTest(point - (0.5 if ref is None else ref), float(boot.std(ddof=1)), df)
        lo, hi = auc_ci = test.interval(level * (1 - SHIFT_ALPHA_SHARE))
        stat, ci = ("AUC - AUC_retain", (lo, hi)) if r is not None else ("AUC", (lo + 0.5, hi + 0.5))
        if s in SHIFT_SCORES and _status(lo, hi) is None:
            centre, means = _log_nll_shift(mu, nu, cm, cn, s)
            if r is not None:
                r_centre, r_means = _log_nll_shift(mr, nr, cm, cn, s)
                centre, means = centre - r_centre, means - r_means
            slo, shi = MeanTest(float(centre), float(means.std(ddof=1)), df).interval(level * SHIFT_ALPHA_SHARE)
            if _status(slo, shi) is not None:
                stat, ci, lo, hi = f"log-NLL shift ({s}) {centre:+.3g}", (slo, shi), slo, shi
        saturated = point in (0.0, 1.0) and (ref is None or ref in (0.0, 1.0)) and test.se == 0
        ses.append(test.se)
        out.append(ScoreEvidence(s, point, ci, stat, ref, test.estimate,
                                 math.inf if saturated else test.supported_margin(eq_alpha), _status(lo, hi) or "",
                                 auc_ci))
    n_units = len(member_units)
    return _Evidence(out, [], max(ses), max(ses) * math.sqrt(n_units), n_units,
                     "people" if n_units < m else "records")


def _log_nll_shift(m: np.ndarray, n: np.ndarray, cm: np.ndarray, cn: np.ndarray, name: str) -> tuple[float, np.ndarray]:
    """The mean `log_nll` of ``m`` minus that of ``n``, and its bootstrap draws (the counts ``cm``, ``cn``)."""
    lm, ln = log_nll(m, name), log_nll(n, name)
    return float(lm.mean() - ln.mean()), cm @ lm / cm.sum(1) - cn @ ln / cn.sum(1)


def _hanley_mcneil_se(a: float, m: int, n: int) -> float:
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)
    null = (m + n + 1) / (12 * m * n)
    return math.sqrt(max(var, null))


def _absolute_group_path(u: tuple[Mapping, Mapping], member_blocks: list[np.ndarray], blocks: list[np.ndarray],
                         alpha: float, eq_alpha: float) -> _Evidence:
    """Path 3: absolute, people on both sides: Mann-Whitney over person means; TOST on that AUC."""
    k, n = len(member_blocks), len(blocks)
    level = alpha / len(u[0])
    df = max(1, min(k, n) - 1) if min(k, n) < SMALL_SAMPLE else math.inf
    out, ses = [], []
    for s in u[0]:
        mu, nu = np.asarray(u[0][s], float), np.asarray(u[1][s], float)
        gm, gn = np.array([mu[b].mean() for b in member_blocks]), np.array([nu[b].mean() for b in blocks])
        p = float(stats.mannwhitneyu(gm, gn, alternative="two-sided").pvalue)
        g_auc = auc(gm, gn)
        lo, hi = (g_auc - 0.5, g_auc - 0.5) if p < level else (min(0.0, g_auc - 0.5), max(0.0, g_auc - 0.5))
        test = MeanTest(g_auc - 0.5, _hanley_mcneil_se(g_auc, k, n), df)
        ses.append(test.se)
        out.append(ScoreEvidence(s, auc(mu, nu), (lo + 0.5, hi + 0.5), f"person AUC {g_auc:.3f}, p {p:.2g}", None,
                                 test.estimate, test.supported_margin(eq_alpha), _status(lo, hi) or "", (lo, hi)))
    return _Evidence(out, [], max(ses), max(ses) * math.sqrt(k), k, "people")


# ---------------------------------------------------------------- the decision

def decide(evidence: list[ScoreEvidence], people: list[PersonFlag], margin: float) -> str:
    """NOT REMOVED (a score or a person significantly more likely) > OVER-UNLEARNED (less likely) > REMOVED
    (every score's equivalence test inside +-margin) > INCONCLUSIVE. Sets each score's status."""
    for e in evidence:
        if e.status not in (NOT_REMOVED, OVER_UNLEARNED):
            e.status = REMOVED if e.supported_margin <= margin else INCONCLUSIVE
    found = {e.status for e in evidence} | {f.direction for f in people}
    return max(found, key=lambda s: SEVERITY[s])


def two_sided_verdict(members: Mapping[str, np.ndarray], nonmembers: Mapping[str, np.ndarray], *,
                      nonmember_groups: Sequence[str] | None = None, member_groups: Sequence[str] | None = None,
                      retain_members: Mapping[str, np.ndarray] | None = None,
                      retain_nonmembers: Mapping[str, np.ndarray] | None = None, alpha: float = 0.05,
                      margin: float | None = None, equivalence_alpha: float | None = None, n_boot: int = 1000,
                      seed: int = 0, attack: str = "none") -> Verdict:
    """The verdict over all scores given (``score -> [N]`` arrays, higher = member). ``alpha``: the family level
    of the significance side over scores and people; ``equivalence_alpha`` (default ``alpha``): each TOST's
    level; ``margin``: the equivalence margin in AUC (None: `default_margin` from the data)."""
    eq_alpha = alpha if equivalence_alpha is None else equivalence_alpha
    m, n = len(next(iter(members.values()))), len(next(iter(nonmembers.values())))
    blocks, member_blocks = _group_index(nonmember_groups, n), _group_index(member_groups, m)
    relative = retain_members is not None and retain_nonmembers is not None
    grouped = member_groups is not None and nonmember_groups is not None
    u = (members, nonmembers)
    r = (retain_members, retain_nonmembers) if relative else None
    if relative and grouped and len(blocks) >= 3:
        assert r is not None and member_groups is not None
        people = list(dict.fromkeys(member_groups))
        ev = _placebo_path(u, r, member_blocks, blocks, people, alpha, eq_alpha, seed)
    elif relative or not grouped:
        units = member_blocks if len(member_blocks) > 1 else _group_index(None, m)
        ev = _bootstrap_path(u, r, units, blocks, alpha, eq_alpha, n_boot, seed)
    else:
        ev = _absolute_group_path(u, member_blocks, blocks, alpha, eq_alpha)
    chosen = default_margin(ev.spread, ev.units) if margin is None else margin
    status = decide(ev.scores, ev.people, chosen)
    bound = max(e.supported_margin for e in ev.scores)
    needed = units_needed(ev.unit_sd, chosen, eq_alpha, len(ev.scores)) if status == INCONCLUSIVE else None
    v = Verdict(status, "", alpha, chosen, bound, m, len(blocks), relative, ev.scores, attack, ev.people,
                ev.spread, needed, ev.unit)
    v.message = verdict_message(v, ev.units)
    return v


def _people_named(flags: list[PersonFlag], direction: str) -> str:
    by: dict[str, list[str]] = {}
    for f in flags:
        if f.direction == direction:
            by.setdefault(f.person, []).append(f"{f.score} t {f.t:+.1f}")
    return "; ".join(f"{p} ({', '.join(v)})" for p, v in by.items())


def verdict_message(v: Verdict, units: int) -> str:
    """One paragraph: the decision, the score or people that decided it, the margin and the bound."""
    target = "the never-trained (retain or reference) model's" if v.relative else "chance (0.5)"
    band = f"+-{v.margin:.3f} AUC of {target} level"
    worst = max(v.evidence, key=lambda e: SEVERITY[e.status])
    named = _people_named(v.people, v.status)
    if v.status in (NOT_REMOVED, OVER_UNLEARNED):
        how = "MORE" if v.status == NOT_REMOVED else "LESS"
        if worst.status == v.status:
            msg = (f"{v.status}: by {worst.score} the forget set is {how} likely than held-out data "
                   f"({worst.statistic}: {worst.ci[0]:.3f}..{worst.ci[1]:.3f} excludes 0, AUC {worst.auc:.3f})")
        else:
            msg = f"{v.status}: the set as a whole is not separated, but some people are"
        if named:
            msg += f"; people {how} likely than never-seen ones: {named}"
    elif v.status == REMOVED:
        msg = (f"REMOVED within {band}: every score's equivalence test passes (upper bound of the residual "
               f"separation {v.bound:.3f}, alpha {v.alpha}), no person stands out")
    else:
        bound = "unbounded (the AUC is saturated)" if math.isinf(v.bound) else f"{v.bound:.3f}"
        msg = (f"INCONCLUSIVE: no score or person separates the sets, but the data only bound the residual "
               f"separation by {bound}, not within {band}; ")
        if v.needed is not None and v.needed <= units:
            msg += (f"{units} forget {v.unit} would do for a separation near 0, but the estimated one "
                    f"({max(abs(e.separation) for e in v.evidence):.3f}) leaves too little room")
        else:
            msg += f"about {v.needed or 'more'} forget {v.unit} (now {units}) would be needed"
    msg += (f" [two never-trained models differ by about {v.spread:.3f} AUC (1 sd) on a set of this size]"
            if math.isfinite(v.spread) else "")
    if not v.relative:
        msg += ("; nothing controls a shift between the sets: valid only if forget and held-out records are "
                "exchangeable (give a retain or reference model for a relative verdict)")
    return msg


def worst_case(verdicts: Sequence[Verdict]) -> Verdict:
    """The battery's verdict: the most severe over the attacks (NOT REMOVED > OVER-UNLEARNED > INCONCLUSIVE)."""
    return max(verdicts, key=lambda v: SEVERITY[v.status])


PRESENT, NOT_DETECTABLE, CANNOT_JUDGE = "PRESENT", "NOT DETECTABLE", "CANNOT JUDGE"


def presence(v: Verdict, shift: str | None = None) -> tuple[str, str]:
    """The words of an audit, which asks whether data is present, not whether it was removed: (word, message).
    NOT REMOVED -> PRESENT; REMOVED -> NOT DETECTABLE within +-margin; without a retain (or reference) model an
    OVER-UNLEARNED verdict, or any verdict when ``shift`` (a test of exchangeability failed, said in it) is
    given, is CANNOT JUDGE: members less likely than never-seen data, or a separation either way, is what a
    shift between the sets also produces."""
    body = v.message.split(": ", 1)[1] if ": " in v.message else v.message
    if not v.relative and (shift or v.status == OVER_UNLEARNED):
        why = shift or "the members are LESS likely than the non-members, which a shift between the sets explains"
        return CANNOT_JUDGE, (f"{CANNOT_JUDGE}: the sets are not shown exchangeable ({why}); give a retain or "
                              f"reference model (never trained on either set) for a relative verdict. The raw test "
                              f"said {v.status}: {body}")
    word = {NOT_REMOVED: PRESENT, REMOVED: NOT_DETECTABLE}.get(v.status, v.status)
    return word, f"{word}: {body}"
