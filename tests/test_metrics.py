from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from unlearn.auditors import metrics
from unlearn.auditors.metrics import (
    auc,
    block_bootstrap_counts,
    bootstrap_auc_ci,
    holm,
    ks_p,
    mann_whitney_p,
    privleak,
    resampled_aucs,
    roc_curve,
    tpr_at_fpr,
    weighted_aucs,
)
from unlearn.auditors.tofu import rouge_l_recall


def _brute_auc(m, n) -> float:
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in m for b in n)
    return total / (len(m) * len(n))


def _brute_tpr(m, n, max_fpr) -> float:
    best = 0.0
    for t in sorted(set(m) | set(n)) + [np.inf]:
        fpr = np.mean([b >= t for b in n])
        if fpr <= max_fpr:
            best = max(best, np.mean([a >= t for a in m]))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_tpr_equal_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 12, size=rng.integers(5, 60)).astype(float)  # small integer range: many ties
    n = rng.integers(-3, 9, size=rng.integers(5, 300)).astype(float)
    assert auc(m, n) == pytest.approx(_brute_auc(m, n), abs=1e-12)
    for fpr in (0.0, 0.001, 0.01, 0.1, 0.5):
        assert tpr_at_fpr(m, n, fpr) == pytest.approx(_brute_tpr(m, n, fpr))


@pytest.mark.parametrize("seed", range(3))
def test_resampled_aucs_equal_one_brute_force_auc_per_draw(seed: int) -> None:
    """Draws of any length (groups resampled whole), repeated indices and ties, over several chunks."""
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 8, size=40).astype(float)
    n = rng.integers(-2, 6, size=25).astype(float)
    draws = [(rng.integers(0, 40, rng.integers(1, 60)), rng.integers(0, 25, rng.integers(1, 40))) for _ in range(70)]
    got = resampled_aucs(m, n, draws, chunk=16)
    assert got == pytest.approx([_brute_auc(m[i], n[j]) for i, j in draws], abs=1e-12)


@pytest.mark.parametrize("small_pairs", [0, 1 << 20])  # the rank-histogram path, the win-matrix product
def test_block_bootstrap_counts_resample_whole_blocks_and_weight_the_aucs(monkeypatch, small_pairs) -> None:
    """Each draw takes as many blocks as there are, with replacement, every record of a block as often as its
    block; the weighted AUC of a draw is the brute-force AUC of the records repeated that often."""
    monkeypatch.setattr(metrics, "SMALL_PAIRS", small_pairs)
    rng = np.random.default_rng(4)
    m = rng.integers(0, 6, size=12).astype(float)
    n = rng.integers(-1, 5, size=20).astype(float)
    blocks = [np.array(b) for b in ([0, 5, 7], [1, 2], [3], [4, 6, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19])]
    cn = block_bootstrap_counts(rng, blocks, 20, 150)
    cm = block_bootstrap_counts(rng, [np.array([i]) for i in range(12)], 12, 150)
    assert cn.shape == (150, 20) and cm.shape == (150, 12) and np.all(cm.sum(1) == 12)
    for b in blocks:
        assert np.all(cn[:, b] == cn[:, b[:1]])  # a block is drawn whole
    assert np.all(sum(cn[:, b[0]] for b in blocks) == len(blocks))
    assert cn[:, 3].mean() == pytest.approx(1.0, abs=0.25)  # each block drawn once per draw on average
    got = weighted_aucs(m, n, cm, cn, chunk=32)
    want = [_brute_auc(np.repeat(m, a), np.repeat(n, b)) for a, b in zip(cm, cn)]
    assert got == pytest.approx(want, abs=1e-12)


def test_roc_and_edge_cases() -> None:
    fpr, tpr = roc_curve(np.array([3.0, 2.0]), np.array([1.0, 0.0]))
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    assert auc([1.0, 1.0], [1.0]) == 0.5
    assert auc([2.0], [1.0]) == 1.0 and auc([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        auc([np.nan], [1.0])


def test_pvalues_ci_privleak_holm() -> None:
    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    assert mann_whitney_p(m, n) < 1e-6 and mann_whitney_p(n, m) > 0.99
    lo, hi = bootstrap_auc_ci(m, n, n_boot=300)
    assert lo < auc(m, n) < hi and hi - lo < 0.15
    assert privleak(0.75, 0.5) == pytest.approx(-50.0) and privleak(0.5, 0.5) == 0
    assert privleak(0.5, 1.0) is None  # undefined when the retain model separates perfectly
    assert ks_p(m, m) == 1.0 and ks_p(m, n) == pytest.approx(stats.ks_2samp(m, n).pvalue)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_rouge_l_recall() -> None:
    assert rouge_l_recall("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l_recall("cat the", "the cat") == 0.5
    assert rouge_l_recall("Kalo was born in Tolmere.", "Kalo Venra was born in the town of Tolmere.") == \
        pytest.approx(5 / 9)
    assert rouge_l_recall("", "x") == 0.0


def test_group_means_for_clustered_records() -> None:
    from unlearn.auditors.audit import group_means
    from unlearn.data import qa_record
    from unlearn.splits import group_labels

    vals = np.array([1.0, 3.0, 10.0, 2.0])
    assert group_means(vals, ["a", "a", "b", "c"]).tolist() == [2.0, 10.0, 2.0]
    assert group_means(vals, None) is vals
    recs = [qa_record("x", "Q?", "A.", person="p1"), qa_record("y", "Q?", "B.", person="p2")]
    assert group_labels(recs) == ["p1", "p2"]
    assert group_labels([*recs, qa_record("z", "Q?", "C.")]) is None


def test_privleak_bootstrap_ci_is_paired_and_covers_the_estimate() -> None:
    from unlearn.auditors.metrics import bootstrap_privleak_ci

    rng = np.random.default_rng(3)
    rm, rn = rng.normal(0.1, 1, 100), rng.normal(0, 1, 300)  # a retain model: about 0.53
    assert bootstrap_privleak_ci(rm, rn, rm, rn, n_boot=200) == (0.0, 0.0)  # the same model: exactly 0
    um, un = rng.normal(0.6, 1, 100), rng.normal(0, 1, 300)  # still partly detectable
    lo, hi = bootstrap_privleak_ci(um, un, rm, rn, n_boot=400)
    point = privleak(auc(um, un), auc(rm, rn))
    assert point is not None and lo < point < hi < 0 and hi - lo < 60
