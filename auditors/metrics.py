"""Detection metrics over member scores M and non-member scores N (higher score = member)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def _as_arrays(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, n = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("scores contain NaN or infinity")
    return m, n


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score_m > score_n) + 0.5 P(score_m = score_n), via average ranks (Mann-Whitney U / (|M||N|))."""
    m, n = _as_arrays(members, nonmembers)
    ranks = stats.rankdata(np.concatenate([m, n]))
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2
    return float(u / (m.size * n.size))


def resampled_aucs(members: np.ndarray, nonmembers: np.ndarray,
                   draws: Sequence[tuple[np.ndarray, np.ndarray]], chunk: int = 64) -> np.ndarray:
    """``auc(members[i], nonmembers[j])`` for every index pair ``(i, j)`` in ``draws`` (any lengths)."""
    m, n = _as_arrays(members, nonmembers)
    out = np.empty(len(draws))
    for lo in range(0, len(draws), chunk):
        part = draws[lo: lo + chunk]
        out[lo: lo + len(part)] = weighted_aucs(
            m, n, np.stack([np.bincount(i, minlength=m.size) for i, _ in part]),
            np.stack([np.bincount(j, minlength=n.size) for _, j in part]))
    return out


SMALL_PAIRS = 8192  # member x non-member pairs up to which `weighted_aucs` multiplies the counts by the win matrix


def weighted_aucs(members: np.ndarray, nonmembers: np.ndarray, member_counts: np.ndarray,
                  nonmember_counts: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Per row of the count matrices (``[B, |M|]``, ``[B, |N|]``: how often each record was drawn), the AUC of
    the resampled sets, without a sort per row: scores become ranks in the pooled set; per row the
    non-members' rank histogram, summed along the ranks, counts for every member the non-members below it
    (ties one half)."""
    m, n = _as_arrays(members, nonmembers)
    if m.size * n.size <= SMALL_PAIRS:  # small sets (the stopping rule's subsamples): one product, no histogram
        wins = (m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])
        cm, cn = np.asarray(member_counts, np.float64), np.asarray(nonmember_counts, np.float64)
        return ((cm @ wins) * cn).sum(axis=1) / (cm.sum(axis=1) * cn.sum(axis=1))
    _, ranks = np.unique(np.concatenate([m, n]), return_inverse=True)
    mr, nr = ranks[: m.size], ranks[m.size:]
    k = int(ranks.max()) + 1
    order = np.argsort(nr, kind="stable")
    present, starts = np.unique(nr[order], return_index=True)
    out = np.empty(len(member_counts))
    for lo in range(0, len(member_counts), chunk):
        cm = np.asarray(member_counts[lo: lo + chunk], np.float64)
        cn = np.asarray(nonmember_counts[lo: lo + chunk], np.float64)
        hist = np.zeros((len(cm), k))
        hist[:, present] = np.add.reduceat(cn[:, order], starts, axis=1)
        below = np.cumsum(hist, axis=1) - hist
        wins = (cm * (below[:, mr] + 0.5 * hist[:, mr])).sum(axis=1)
        out[lo: lo + len(cm)] = wins / (cm.sum(axis=1) * cn.sum(axis=1))
    return out


def block_bootstrap_counts(rng: np.random.Generator, blocks: Sequence[np.ndarray], n: int,
                           n_boot: int) -> np.ndarray:
    """``[n_boot, n]``: how often each of ``n`` records is drawn when its block (a group, or the record alone)
    is resampled with the others, ``len(blocks)`` blocks with replacement per draw (for `weighted_aucs`)."""
    owner = np.empty(n, dtype=np.int64)
    for g, b in enumerate(blocks):
        owner[b] = g
    picks = rng.multinomial(len(blocks), np.full(len(blocks), 1.0 / len(blocks)), size=n_boot)
    return picks[:, owner]


def roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR for "member iff score >= t" over every distinct threshold t, from (0,0) to (1,1)."""
    m, n = _as_arrays(members, nonmembers)
    thresholds = np.unique(np.concatenate([m, n]))[::-1]
    ms, ns = np.sort(m), np.sort(n)
    tpr = (m.size - np.searchsorted(ms, thresholds, side="left")) / m.size
    fpr = (n.size - np.searchsorted(ns, thresholds, side="left")) / n.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, max_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is at most ``max_fpr``."""
    fpr, tpr = roc_curve(members, nonmembers)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max())


def bootstrap_auc_ci(members: np.ndarray, nonmembers: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling members and non-members independently."""
    m, n = _as_arrays(members, nonmembers)
    rng = np.random.default_rng(seed)
    vals = resampled_aucs(m, n, [(rng.integers(0, m.size, m.size), rng.integers(0, n.size, n.size))
                                 for _ in range(n_boot)])
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mann_whitney_p(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value for H1: member scores are stochastically larger."""
    m, n = _as_arrays(members, nonmembers)
    return float(stats.mannwhitneyu(m, n, alternative="greater", method="auto").pvalue)


def privleak(auc_unlearned: float, auc_retain: float) -> float | None:
    """PrivLeak (MUSE, Shi et al. 2024; open-unlearning ``privacy.privleak``), from our "higher = member"
    forget-vs-holdout AUCs: MUSE orients the AUC the other way, AUC' = 1 - AUC, and reports
    (AUC'_unlearned - AUC'_retain) / AUC'_retain * 100 = (AUC_retain - AUC_unlearned) / (1 - AUC_retain) * 100.
    0 is ideal, about -100 means still fully detectable (the original model), positive means over-unlearned.
    None (undefined) when the retain model's AUC is 1."""
    if auc_retain >= 1:
        return None
    return (auc_retain - auc_unlearned) / (1 - auc_retain) * 100.0


def bootstrap_privleak_ci(members: np.ndarray, nonmembers: np.ndarray, retain_members: np.ndarray,
                          retain_nonmembers: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap CI of privleak: the same resampled records score both models (paired), so the
    interval reflects which records were drawn, not two independent draws."""
    m, n = _as_arrays(members, nonmembers)
    rm, rn = _as_arrays(retain_members, retain_nonmembers)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i, j = rng.integers(0, m.size, m.size), rng.integers(0, n.size, n.size)
        v = privleak(auc(m[i], n[j]), auc(rm[i], rn[j]))
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ks_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (TOFU's forget quality uses it on truth ratios)."""
    return float(stats.ks_2samp(np.asarray(a), np.asarray(b)).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (several scores tested on the same sets)."""
    order = np.argsort(pvalues)
    adjusted = np.empty(len(pvalues))
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks (ties handled as scipy does)."""
    return pearson(average_ranks(a), average_ranks(b))
