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
    groups_needed,
    joint_critical_value,
    members_needed,
    min_detectable_auc,
    placebo_t_test,
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


def test_bootstrap_paths_keep_their_level_and_their_stated_power() -> None:
    """The record-level bootstrap verdicts (the stopping rule's: members by record, held-out data by person,
    absolute or relative to a paired retain model) on simulated data: with nothing to find, a false alarm in
    at most about alpha of the runs; at the stated minimum detectable AUC, a detection in about 80%."""
    rng = np.random.default_rng(3)
    groups = [f"g{i // 10}" for i in range(200)]

    def held_out() -> np.ndarray:  # people differ: ten records share a person's offset
        return rng.normal(0, 1, 200) + np.repeat(rng.normal(0, 0.3, 20), 10)

    alarms = {"absolute": 0, "relative": 0}
    detectable = []
    for _ in range(300):
        members, nonmembers = rng.normal(0, 1.04, 400), held_out()  # 1.04: the people's spread, not grouped
        v = two_sided_verdict({"loss": members}, {"loss": nonmembers}, nonmember_groups=groups, n_boot=200,
                              seed=int(rng.integers(1 << 30)))
        alarms["absolute"] += v.status in (NOT_REMOVED, OVER_UNLEARNED)
        detectable.append(v.min_detectable_auc)
        noise_m, noise_n = rng.normal(0, 0.5, 400), held_out() * 0.5  # the retain model: correlated scores
        r = two_sided_verdict({"loss": members + noise_m}, {"loss": nonmembers + noise_n}, nonmember_groups=groups,
                              retain_members={"loss": members}, retain_nonmembers={"loss": nonmembers}, n_boot=200,
                              seed=int(rng.integers(1 << 30)))
        alarms["relative"] += r.status in (NOT_REMOVED, OVER_UNLEARNED)
    assert all(a / 300 <= 0.05 * 1.6 for a in alarms.values()), alarms
    d = np.sqrt(2) * stats.norm.ppf(float(np.median(detectable)))  # a shift with the stated detectable AUC
    hits = sum(two_sided_verdict({"loss": rng.normal(d * 1.04, 1.04, 400)}, {"loss": held_out()},
                                 nonmember_groups=groups, n_boot=200, seed=i).status == NOT_REMOVED
               for i in range(200))
    assert 0.7 <= hits / 200 <= 0.92, hits / 200


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


def _two_never_trained_models(rng: np.random.Generator, people: int, per: int = 10,
                              between: float = 0.6) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores of the same never-seen people under two models: a person's difficulty is shared, and each model
    also has its own take on each person (``between``), as two seeds do."""
    difficulty = rng.normal(0, 1, people)
    groups = [f"p{i // per}" for i in range(people * per)]

    def model() -> np.ndarray:
        own = difficulty + rng.normal(0, between, people)
        return np.concatenate([own[i] + rng.normal(0, 0.5, per) for i in range(people)])

    return model(), model(), groups


def test_relative_single_person_verdict_keeps_its_false_alarm_rate_across_never_trained_models() -> None:
    """A second never-trained model judged against the retain model, one person at a time: the placebo
    t-test stays near its level where the paired bootstrap over that person's records does not."""
    rng = np.random.default_rng(3)
    alarms = {"placebo": 0, "records": 0}
    runs = 40
    for _ in range(runs):
        other, retain, groups = _two_never_trained_models(rng, 16)
        m, h = slice(0, 10), slice(10, None)  # person 0 is the request, 15 held-out people
        kw = {"retain_members": {"loss": retain[m]}, "retain_nonmembers": {"loss": retain[h]}, "n_boot": 200}
        v = two_sided_verdict({"loss": other[m]}, {"loss": other[h]}, nonmember_groups=groups[10:],
                              member_groups=groups[:10], **kw)
        alarms["placebo"] += v.status in (NOT_REMOVED, OVER_UNLEARNED)
        records = two_sided_verdict({"loss": other[m]}, {"loss": other[h]}, nonmember_groups=groups[10:], **kw)
        alarms["records"] += records.status in (NOT_REMOVED, OVER_UNLEARNED)
    assert alarms["placebo"] / runs <= 0.1, alarms
    assert alarms["records"] / runs >= 0.3, alarms  # what the placebo groups are for


def test_relative_grouped_verdict_detects_memorised_people_and_powers_many_groups() -> None:
    rng = np.random.default_rng(4)
    other, retain, groups = _two_never_trained_models(rng, 60, between=0.2)
    m, h = slice(0, 300), slice(300, None)  # 30 forget people, 30 held-out people
    kw = {"nonmember_groups": groups[300:], "member_groups": groups[:300], "n_boot": 100,
          "retain_members": {"loss": retain[m]}, "retain_nonmembers": {"loss": retain[h]}}
    assert two_sided_verdict({"loss": other[m]}, {"loss": other[h]}, **kw).status == REMOVED
    memorised = two_sided_verdict({"loss": other[m] + 3}, {"loss": other[h]}, **kw)
    assert memorised.status == NOT_REMOVED and "group dAUC" in memorised.message
    assert two_sided_verdict({"loss": other[m] - 3}, {"loss": other[h]}, **kw).status == OVER_UNLEARNED
    itself = two_sided_verdict({"loss": retain[m]}, {"loss": retain[h]}, **kw)
    assert itself.status == REMOVED and itself.min_detectable_auc == 0.5
    one = two_sided_verdict({"loss": other[:10]}, {"loss": other[h]}, **{
        **kw, "member_groups": groups[:10], "retain_members": {"loss": retain[:10]}})
    assert one.status == INCONCLUSIVE and "forget groups" in one.message, one.message


def test_a_memorised_single_person_is_detected_by_its_mean_shift_where_the_auc_saturates() -> None:
    """One person far above every held-out record: its AUC is 1.0 whatever the margin, so the AUC excess is
    1 - AUC_retain(person), small for a person the retain model already finds likely; the mean-score shift
    is not capped. Memorised people are NOT REMOVED (and wiped-out ones OVER-UNLEARNED) nearly always."""
    rng = np.random.default_rng(7)
    found = {"not_removed": 0, "by_shift": 0, "over": 0}
    runs = 40
    for _ in range(runs):
        other, retain, groups = _two_never_trained_models(rng, 16)
        m, h = slice(0, 10), slice(10, None)
        kw = {"nonmember_groups": groups[10:], "member_groups": groups[:10], "n_boot": 100,
              "retain_members": {"loss": retain[m]}, "retain_nonmembers": {"loss": retain[h]}}
        v = two_sided_verdict({"loss": other[m] + 6}, {"loss": other[h]}, **kw)
        found["not_removed"] += v.status == NOT_REMOVED
        found["by_shift"] += "mean-loss shift" in v.message
        found["over"] += two_sided_verdict({"loss": other[m] - 6}, {"loss": other[h]}, **kw).status == OVER_UNLEARNED
    assert found["not_removed"] / runs >= 0.95 and found["over"] / runs >= 0.95, found
    assert found["by_shift"] / runs >= 0.3, found  # the people the AUC alone misses


def test_placebo_t_test_matches_scipy_and_groups_needed_reaches_the_power() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.3, 1, 7), rng.normal(0, 1, 12)
    diff, (lo, hi), _, sd = placebo_t_test(a, b, 0.05)
    ref = stats.ttest_ind(a, b, equal_var=True)
    ci = ref.confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean()) and (lo, hi) == pytest.approx((ci.low, ci.high))
    k = groups_needed(0.5, 1.0, 40, 0.05)
    assert k is not None and groups_needed(0.5, 1.0, 3, 0.05) is None
    hits = sum(stats.ttest_ind(rng.normal(0.5, 1, k), rng.normal(0, 1, 40)).pvalue < 0.05 for _ in range(1000))
    assert 0.74 < hits / 1000 < 0.9, (k, hits)


def test_joint_critical_value_sits_between_one_test_and_bonferroni_and_keeps_the_family_level() -> None:
    rng = np.random.default_rng(6)
    k, n, alpha = 10, 20, 0.05
    one, bonf = stats.t.ppf(1 - alpha / 2, k + n - 2), stats.t.ppf(1 - alpha / 8, k + n - 2)

    def scores(rho: float) -> list[tuple[np.ndarray, np.ndarray]]:
        common = rng.normal(0, 1, k + n)
        cols = [np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(0, 1, k + n) for _ in range(4)]
        return [(c[:k], c[k:]) for c in cols]

    near_one = joint_critical_value([(a, b) for a, b in [scores(0.999)[0]] * 4], alpha)
    assert near_one == pytest.approx(one, abs=0.05)
    independent = joint_critical_value(scores(0.0), alpha)
    assert bonf - 0.2 < independent <= bonf
    alarms = 0
    for _ in range(300):
        pairs = scores(0.8)
        c = joint_critical_value(pairs, alpha, draws=4000)
        tests = [placebo_t_test(a, b, alpha) for a, b in pairs]
        ts = [abs(diff) / (sd * np.sqrt(1 / k + 1 / n)) for diff, _, _, sd in tests]
        alarms += max(ts) > c
        assert one < c < bonf
    assert alarms / 300 <= 0.08, alarms
