"""Two-sided verdicts on synthetic scores, and the minimum-detectable-AUC formula against a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from unlearn.auditors.verdict import (
    INCONCLUSIVE,
    NOT_REMOVED,
    OVER_UNLEARNED,
    REMOVED,
    members_needed,
    min_detectable_auc,
    two_sided_verdict,
    worst_case,
)


def _scores(target_auc: float, m: int, n: int, seed: int = 0) -> tuple[dict, dict, list[str]]:
    """Normal scores whose population AUC is ``target_auc``: d = sqrt(2) Phi^-1(AUC)."""
    rng = np.random.default_rng(seed)
    d = np.sqrt(2) * stats.norm.ppf(target_auc)
    groups = [f"g{i // 5}" for i in range(n)]  # five records per held-out person
    return {"loss": rng.normal(d, 1, m)}, {"loss": rng.normal(0, 1, n)}, groups


@pytest.mark.parametrize(("target", "expected"), [(0.3, OVER_UNLEARNED), (0.7, NOT_REMOVED), (0.5, REMOVED)])
def test_verdict_direction_with_enough_data(target: float, expected: str) -> None:
    m, n, groups = _scores(target, 300, 400)
    v = two_sided_verdict(m, n, nonmember_groups=groups, n_boot=400)
    assert v.status == expected, v.message
    assert v.min_detectable_auc < 0.75 and expected.split()[0] in v.message


def test_too_few_groups_is_inconclusive_and_says_what_would_be_needed() -> None:
    m, n, groups = _scores(0.5, 5, 15)  # 5 forget records against 3 held-out people
    v = two_sided_verdict(m, n, nonmember_groups=groups, n_boot=400)
    assert v.status == INCONCLUSIVE and v.nonmember_groups == 3 and v.min_detectable_auc > 0.75
    assert "would be needed" in v.message


def test_relative_verdict_does_not_call_a_shared_shift_membership() -> None:
    rng = np.random.default_rng(1)
    shift = 0.8  # the forget set differs from the holdout for every model (e.g. length)
    retain_m, retain_n = rng.normal(shift, 1, 200), rng.normal(0, 1, 300)
    unlearned_m, unlearned_n = retain_m + rng.normal(0, 0.05, 200), retain_n + rng.normal(0, 0.05, 300)
    absolute = two_sided_verdict({"loss": unlearned_m}, {"loss": unlearned_n}, n_boot=300)
    relative = two_sided_verdict({"loss": unlearned_m}, {"loss": unlearned_n}, retain_members={"loss": retain_m},
                                 retain_nonmembers={"loss": retain_n}, n_boot=300)
    assert absolute.status == NOT_REMOVED and relative.status == REMOVED and relative.relative
    still = two_sided_verdict({"loss": retain_m + 1.0}, {"loss": retain_n}, retain_members={"loss": retain_m},
                              retain_nonmembers={"loss": retain_n}, n_boot=300)
    assert still.status == NOT_REMOVED
    assert worst_case([relative, still, absolute]).status == NOT_REMOVED


def test_min_detectable_auc_has_the_stated_power_in_simulation() -> None:
    m, n, alpha = 40, 120, 0.05
    target = min_detectable_auc(m, n, alpha, power=0.8)
    assert 0.6 < target < 0.75
    rng = np.random.default_rng(0)
    d = np.sqrt(2) * stats.norm.ppf(target)
    hits = sum(stats.mannwhitneyu(rng.normal(d, 1, m), rng.normal(0, 1, n), alternative="two-sided").pvalue < alpha
               for _ in range(2000))
    assert abs(hits / 2000 - 0.8) < 0.04, hits / 2000
    assert members_needed(target, n, alpha) == m
    assert min_detectable_auc(1, 20) == 1.0 or min_detectable_auc(1, 20) > 0.9


def test_members_needed_closed_form_equals_the_search() -> None:
    def search(target: float, n: int, alpha: float) -> int | None:
        return next((m for m in range(1, 3000) if min_detectable_auc(m, n, alpha) <= target), None)

    for target, n, alpha in [(0.6, 200, 0.05), (0.6, 200, 0.0125), (0.75, 15, 0.05), (0.75, 40, 0.0125),
                             (0.9, 3, 0.05), (0.9, 15, 0.0125), (0.75, 3, 0.05)]:
        assert members_needed(target, n, alpha) == search(target, n, alpha), (target, n, alpha)
    assert members_needed(0.75, 3, 0.05) is None  # three held-out groups can never show AUC 0.75


def test_grouped_absolute_test_keeps_its_false_alarm_rate_where_a_record_level_one_does_not() -> None:
    """People differ (a random effect per person): facts of a never-trained person are not independent."""
    rng = np.random.default_rng(2)
    alarms = {"grouped": 0, "records": 0}
    runs = 60
    for _ in range(runs):
        def people(k: int) -> tuple[np.ndarray, list[str]]:
            effects = rng.normal(0, 1, k)
            return (np.concatenate([e + rng.normal(0, 0.3, 5) for e in effects]),
                    [f"{id(effects)}-{i // 5}" for i in range(5 * k)])

        (m, mg), (n, ng) = people(10), people(20)
        for kind, kw in (("grouped", {"member_groups": mg}), ("records", {})):
            v = two_sided_verdict({"loss": m}, {"loss": n}, nonmember_groups=ng if kind == "grouped" else None,
                                  n_boot=200, **kw)
            alarms[kind] += v.status in (NOT_REMOVED, OVER_UNLEARNED)
    assert alarms["grouped"] / runs <= 0.1, alarms
    assert alarms["records"] / runs > 0.3, alarms  # what the grouping is for
    single = two_sided_verdict({"loss": np.ones(10)}, {"loss": n}, nonmember_groups=ng, member_groups=["p"] * 10)
    assert single.status == INCONCLUSIVE and "forget groups" in single.message
