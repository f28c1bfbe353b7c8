"""Two-sided removal verdicts with a stated power.

For each score s: when records come in groups (people), the absolute test is a two-sided Mann-Whitney test
over group means, forget groups against held-out groups (a person's facts share one difficulty, so people
are the unit; a single person can then never be judged absolutely: INCONCLUSIVE, with the number of people
needed). Without groups the statistic is the record-level AUC with a bootstrap interval. With k scores each
test has level alpha/k (Bonferroni). The verdict:

- NOT REMOVED: some score's interval lies above 0.5 (members still more likely than never-seen data);
- OVER-UNLEARNED: some interval lies below 0.5 (members now *less* likely: an attacker spots them too);
- INCONCLUSIVE: no interval excludes 0.5, but the smallest AUC this test would detect with 80% power
  (e.g. 0.5 + (z_{1-alpha/2k} + z_0.8) x SE for the bootstrap) is above ``detectable_bound``;
- REMOVED: no interval excludes 0.5 and the test had the power to see an AUC of ``detectable_bound``.
(Relative verdicts: the same with AUC - AUC_retain against 0, the bound being |AUC - AUC_retain| of
``detectable_bound`` - 0.5.)

With a retain model (trained without the members) the verdict is relative, so a shift between the forget set
and the holdout that the never-trained model also sees, a person's own difficulty included, is not called
membership. With groups on both sides the unit is the group: each forget group's record-level AUC against the
held-out records, minus the retain model's, d_g = AUC_u(g) - AUC_r(g); each held-out group gets the same
statistic against the other held-out groups (leave one group out). Two models that never saw a group still
disagree about it (seed, data order: on the built-in benchmark the standard deviation of d over never-seen
people is about 0.2 AUC), so the held-out groups' d are the null distribution ("placebo" groups): a pooled
two-sample t-test of the forget groups' d against them, powered by the numbers of groups. The same test runs
on each group's mean-score shift (mean over the group minus the mean of the held-out records, minus the retain
model's): an AUC saturates at 1.0 for a memorised person, so its excess over the retain model's is
1 - AUC_r(g), small for a person the retain model already finds likely, while the mean shift is not capped;
it decides where the AUC test does not reject (the minimum detectable effect stays the AUC test's). The AUC
tests share one critical value at family level 0.8 alpha, the shift tests (LOSS, zlib, Min-K%: not Min-K%++,
whose record scores are heavy-tailed) one at 0.2 alpha
(`joint_critical_value`: their correlation instead of Bonferroni within a family). (A paired bootstrap
over one person's records treats the retain model as the only possible never-trained model and raised false
alarms on 45% of single-person requests judged on a second seed.)
Without groups the statistic is dAUC over the same resampled records (paired bootstrap), records being the
unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from unlearn.auditors.metrics import auc, block_bootstrap_counts, weighted_aucs

REMOVED, NOT_REMOVED, OVER_UNLEARNED, INCONCLUSIVE = "REMOVED", "NOT REMOVED", "OVER-UNLEARNED", "INCONCLUSIVE"
SHIFT_ALPHA_SHARE = 0.2  # of a placebo verdict's alpha, for the mean-shift tests (the AUC tests keep the rest)
# The scores whose group means are tested too: averages of token log-probs. Min-K%++ divides by the spread of
# the next-token distribution, so its record scores are heavy-tailed and a group mean is not a stable statistic
# (one never-seen person's mean moved by +150 between two never-trained models on the built-in benchmark).
SHIFT_SCORES = ("loss", "zlib", "mink")
SEVERITY = {NOT_REMOVED: 3, OVER_UNLEARNED: 2, INCONCLUSIVE: 1, REMOVED: 0}


def min_detectable_auc(n_members: int, n_nonmembers: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest AUC a two-sided Mann-Whitney test at ``alpha`` detects with ``power`` (normal approximation,
    null standard error sqrt((m + n + 1) / (12 m n)))."""
    se = math.sqrt((n_members + n_nonmembers + 1) / (12 * n_members * n_nonmembers))
    return min(1.0, 0.5 + (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def members_needed(target_auc: float, n_nonmembers: int, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Members needed to detect ``target_auc`` against ``n_nonmembers`` (None: no number suffices): the
    smallest m with ``min_detectable_auc(m, n) <= target_auc``, solved in closed form from
    z^2 (m + n + 1) <= 12 d^2 m n, d = target_auc - 0.5."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    d, n = target_auc - 0.5, n_nonmembers
    if d <= 0 or 12 * d * d * n <= z * z:
        return None
    m = max(1, math.ceil(z * z * (n + 1) / (12 * d * d * n - z * z)))
    while m > 1 and min_detectable_auc(m - 1, n, alpha, power) <= target_auc:  # float rounding at the boundary
        m -= 1
    while min_detectable_auc(m, n, alpha, power) > target_auc:
        m += 1
    return m


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


def group_mean_shifts(scores: np.ndarray, blocks: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Each group's mean score minus the mean of ``reference``: unlike an AUC it does not saturate, so a
    memorised group (every record far above every held-out one) stands out by how far, not just by order."""
    return np.array([scores[b].mean() for b in blocks]) - reference.mean()


def leave_one_group_out_shifts(scores: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Each group's mean score minus the mean of the other groups' records."""
    total, n = scores.sum(), len(scores)
    return np.array([scores[b].mean() - (total - scores[b].sum()) / (n - len(b)) for b in blocks])


def placebo_t_test(d_members: np.ndarray, d_placebo: np.ndarray, level: float, power: float = 0.8,
                   critical: float | None = None) -> tuple[float, tuple[float, float], float, float]:
    """Pooled two-sample t-test of the members' per-group statistics against the placebo groups' (the null
    distribution): (mean difference, its two-sided interval at ``level`` (or +- ``critical`` standard errors),
    the smallest difference detected with ``power``, the pooled standard deviation)."""
    k, n = len(d_members), len(d_placebo)
    dof = k + n - 2
    ss = ((d_members - d_members.mean()) ** 2).sum() + ((d_placebo - d_placebo.mean()) ** 2).sum()
    sd = math.sqrt(ss / dof)
    se = sd * math.sqrt(1 / k + 1 / n)
    diff = float(d_members.mean() - d_placebo.mean())
    q = float(stats.t.ppf(1 - level / 2, dof)) if critical is None else critical
    return diff, (diff - q * se, diff + q * se), (q + float(stats.t.ppf(power, dof))) * se, sd


def joint_critical_value(pairs: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float, draws: int = 20000,
                         seed: int = 0) -> float:
    """The critical |t| for the placebo t-tests of several scores at family level ``alpha``: the 1 - alpha
    quantile of max |T_s|, T a multivariate t with the scores' residual correlation over the groups (the
    scores of one model are strongly correlated, so this is well below Bonferroni's, which caps it)."""
    k, n = len(pairs[0][0]), len(pairs[0][1])
    dof = k + n - 2
    bonferroni = float(stats.t.ppf(1 - alpha / (2 * len(pairs)), dof))
    resid = np.stack([np.concatenate([a - a.mean(), b - b.mean()]) for a, b in pairs])
    if len(pairs) == 1 or (resid.std(axis=1) == 0).any():
        return bonferroni
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(len(pairs)), np.corrcoef(resid), draws, method="eigh")
    t = np.abs(z) / np.sqrt(rng.chisquare(dof, draws) / dof)[:, None]
    return min(float(np.quantile(t.max(axis=1), 1 - alpha)), bonferroni)


def groups_needed(effect: float, sd: float, n_placebo: int, level: float, power: float = 0.8) -> int | None:
    """Forget groups for the placebo t-test to detect ``effect`` (normal approximation); None: no number of
    forget groups suffices against ``n_placebo`` held-out groups."""
    z = stats.norm.ppf(1 - level / 2) + stats.norm.ppf(power)
    room = (effect / (z * sd)) ** 2 - 1 / n_placebo if sd > 0 else math.inf
    return None if room <= 0 else max(1, math.ceil(1 / room))


@dataclass
class ScoreEvidence:
    score: str
    auc: float
    ci: tuple[float, float]  # of the AUC, or of dAUC when relative
    statistic: str  # "AUC" or "AUC - AUC_retain"
    retain_auc: float | None
    min_detectable: float  # the smallest |AUC - 0.5| + 0.5 this interval would have detected (80% power)
    status: str


@dataclass
class Verdict:
    status: str
    message: str
    alpha: float
    detectable_bound: float
    min_detectable_auc: float  # the worst (largest) over the scores
    members: int
    nonmember_groups: int
    relative: bool
    evidence: list[ScoreEvidence] = field(default_factory=list)
    attack: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group_index(groups: Sequence[str] | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    return [np.array(v) for v in by.values()]


def two_sided_verdict(members: Mapping[str, np.ndarray], nonmembers: Mapping[str, np.ndarray], *,
                      nonmember_groups: Sequence[str] | None = None, member_groups: Sequence[str] | None = None,
                      retain_members: Mapping[str, np.ndarray] | None = None,
                      retain_nonmembers: Mapping[str, np.ndarray] | None = None, alpha: float = 0.05,
                      detectable_bound: float = 0.75, n_boot: int = 1000, seed: int = 0,
                      attack: str = "none") -> Verdict:
    """The verdict over all scores given (``score -> [N]`` arrays, higher = member)."""
    names = list(members)
    relative = retain_members is not None and retain_nonmembers is not None
    k = len(names)
    level = alpha / k
    m, n = len(next(iter(members.values()))), len(next(iter(nonmembers.values())))
    blocks = _group_index(nonmember_groups, n)
    member_blocks = _group_index(member_groups, m)
    grouped = member_groups is not None and nonmember_groups is not None
    rng = np.random.default_rng(seed)
    # the bootstrap paths: a normal interval from the bootstrap standard error (a percentile interval at
    # alpha / 2k would rest on the one or two most extreme of a few hundred draws)
    z_half = float(stats.norm.ppf(1 - level / 2))
    z = z_half + stats.norm.ppf(0.8)
    evidence = []
    placebo_sd: dict[str, float] = {}
    placebo: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per score: (forget groups', held-out groups') dAUC
    shifts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the same for the mean-score shift
    counts: tuple[np.ndarray, np.ndarray] | None = None  # bootstrap draws: how often each record is drawn
    use_placebo = relative and grouped and len(blocks) >= 3
    if not use_placebo and (relative or not grouped):  # the bootstrap paths (grouped absolute is rank-based)
        # members by group when there are several (else by record), held-out data by group
        member_units = member_blocks if len(member_blocks) > 1 else _group_index(None, m)
        counts = (block_bootstrap_counts(rng, member_units, m, n_boot),
                  block_bootstrap_counts(rng, blocks, n, n_boot))
    if use_placebo:
        assert retain_members is not None and retain_nonmembers is not None
        for s in names:
            mu, nu = np.asarray(members[s], float), np.asarray(nonmembers[s], float)
            mr, nr = np.asarray(retain_members[s], float), np.asarray(retain_nonmembers[s], float)
            placebo[s] = (group_aucs(mu, member_blocks, nu) - group_aucs(mr, member_blocks, nr),
                          leave_one_group_out_aucs(nu, blocks) - leave_one_group_out_aucs(nr, blocks))
            if s in SHIFT_SCORES:
                shifts[s] = (group_mean_shifts(mu, member_blocks, nu) - group_mean_shifts(mr, member_blocks, nr),
                             leave_one_group_out_shifts(nu, blocks) - leave_one_group_out_shifts(nr, blocks))
        # the AUC tests and the mean-shift tests split alpha (Bonferroni between the two families): the shift
        # test only has to catch what the AUC cannot express, effects far beyond a saturated AUC
        critical = joint_critical_value(list(placebo.values()), alpha * (1 - SHIFT_ALPHA_SHARE), seed=seed)
        shift_critical = joint_critical_value(list(shifts.values()), alpha * SHIFT_ALPHA_SHARE,
                                              seed=seed) if shifts else 0.0
    for s in names:
        mu, nu = np.asarray(members[s], float), np.asarray(nonmembers[s], float)
        point = auc(mu, nu)
        if placebo:
            assert retain_members is not None and retain_nonmembers is not None
            ref = auc(np.asarray(retain_members[s], float), np.asarray(retain_nonmembers[s], float))
            diff, (lo, hi), effect, placebo_sd[s] = placebo_t_test(*placebo[s], level, critical=critical)
            detectable = 0.5 + effect
            stat, ci = f"group dAUC {diff:+.3f} vs {len(blocks)} held-out groups", (lo, hi)
            if s in shifts:
                shift, (slo, shi), _, _ = placebo_t_test(*shifts[s], level, critical=shift_critical)
                if lo <= 0 and (slo > 0 or shi < 0 <= hi):
                    # the mean shift decides where the AUC cannot (saturated, or too coarse for one group)
                    stat, ci = f"group mean-{s} shift {shift:+.3g} vs {len(blocks)} held-out groups", (slo, shi)
                    lo, hi = ci
        elif counts is not None:  # the bootstrap paths: AUC (- AUC_retain, paired over the same draws)
            boot, ref = weighted_aucs(mu, nu, *counts), None
            if relative:
                assert retain_members is not None and retain_nonmembers is not None
                mr, nr = np.asarray(retain_members[s], float), np.asarray(retain_nonmembers[s], float)
                ref = auc(mr, nr)
                boot = boot - weighted_aucs(mr, nr, *counts)
            sd = float(boot.std(ddof=1))
            centre = point - (ref if ref is not None else 0.5)
            lo, hi = centre - z_half * sd, centre + z_half * sd
            detectable = 0.5 + z * sd
            stat, ci = ("AUC - AUC_retain", (lo, hi)) if relative else ("AUC", (lo + 0.5, hi + 0.5))
        else:
            # Absolute, records in groups: people are the unit (a person's facts share one difficulty), so the
            # test is a two-sided Mann-Whitney over group means, powered by the number of groups.
            gm = np.array([mu[b].mean() for b in member_blocks])
            gn = np.array([nu[b].mean() for b in blocks])
            ref = None
            p = float(stats.mannwhitneyu(gm, gn, alternative="two-sided").pvalue)
            g_auc = auc(gm, gn)
            lo, hi = (g_auc - 0.5, g_auc - 0.5) if p < level else (min(0.0, g_auc - 0.5), max(0.0, g_auc - 0.5))
            detectable = min_detectable_auc(len(member_blocks), len(blocks), level)
            stat, ci = f"group AUC {g_auc:.3f}, p {p:.2g}", (lo + 0.5, hi + 0.5)
        status = NOT_REMOVED if lo > 0 else OVER_UNLEARNED if hi < 0 else (
            REMOVED if detectable <= detectable_bound else INCONCLUSIVE)
        evidence.append(ScoreEvidence(s, point, ci, stat, ref, min(1.0, detectable), status))
    worst = max(evidence, key=lambda e: SEVERITY[e.status])
    status = worst.status
    detect = max(e.min_detectable for e in evidence)
    n_groups = len(blocks)
    unit = "groups" if grouped and (placebo_sd or not relative) else "records"
    n_units = len(member_blocks) if unit == "groups" else m
    if status == NOT_REMOVED:
        msg = (f"NOT REMOVED: {worst.score} still separates the forget set from held-out data ({worst.statistic} "
               f"{worst.ci[0]:.3f}..{worst.ci[1]:.3f} excludes {'0' if relative else '0.5'}, AUC {worst.auc:.3f})")
    elif status == OVER_UNLEARNED:
        msg = (f"OVER-UNLEARNED: by {worst.score} the forget set is now LESS likely than held-out data "
               f"({worst.statistic} {worst.ci[0]:.3f}..{worst.ci[1]:.3f}, AUC {worst.auc:.3f}): detectable the other "
               f"way")
    elif status == INCONCLUSIVE:
        if placebo_sd:
            needed = groups_needed(detectable_bound - 0.5, max(placebo_sd.values()), n_groups, level)
        else:
            needed = members_needed(detectable_bound, max(n_groups, 1), level)
        msg = (f"INCONCLUSIVE: no score separates the sets, but with {n_units} forget {unit} and {n_groups} "
               f"held-out groups the test only detects {_effect(detect, relative)} (bound "
               f"{_effect(detectable_bound, relative)}); about {needed or 'more'} forget {unit} (or more held-out "
               f"groups) would be needed")
    else:
        msg = (f"REMOVED: no score separates the forget set from held-out data in either direction, and the test "
               f"would have detected {_effect(detect, relative)} (80% power, alpha {alpha} over {k} scores)")
    if not relative:
        msg += "; nothing controls a shift between the sets (give a retain model for a relative verdict)"
    return Verdict(status, msg, alpha, detectable_bound, detect, m, n_groups, relative, evidence, attack)


def _effect(auc_value: float, relative: bool) -> str:
    return f"|AUC - AUC_retain| >= {auc_value - 0.5:.2f}" if relative else f"AUC >= {auc_value:.2f}"


def worst_case(verdicts: Sequence[Verdict]) -> Verdict:
    """The battery's verdict: the most severe over the attacks (NOT REMOVED > OVER-UNLEARNED > INCONCLUSIVE)."""
    return max(verdicts, key=lambda v: SEVERITY[v.status])
