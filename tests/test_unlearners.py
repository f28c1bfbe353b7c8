"""Conformance suite over every registered method, plus method-specific checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unlearn.attacks.runner import ONE_PASS_SCORES, score_records
from unlearn.data import batches
from unlearn.errors import ConfigError, UnlearnError
from unlearn.loop import run_loop
from unlearn.methods import METHODS, get_method, load_method_args
from unlearn.model import load_model
from unlearn.training import token_nll
from unlearn.unlearner import UnlearnArgs

SHIPPED = ["grad_ascent", "graddiff", "npo", "simnpo", "soul", "newton", "iau", "target_match"]


@torch.no_grad()
def _nll(model, tok, records) -> float:
    return sum(token_nll(model, b).item() * len(b) for b in batches(records, tok, 64)) / len(records)


def _args(name: str, **kw):
    return load_method_args(name, overrides={"eval_every": 0, **kw})


@pytest.mark.parametrize("name", METHODS.names())
def test_conformance_forget_rises_scope_respected_deterministic(name: str, bench) -> None:
    forget, retain = bench.split("forget10")[:40], bench.split("retain90")[:200]
    base, tok = load_model(bench.target)
    before = _nll(base, tok, forget)
    args = _args(name, max_steps=6, scope="last:1", lr=2e-3)
    results = []
    for _ in range(2):
        model, _ = load_model(bench.target)
        original = {n: p.detach().clone() for n, p in model.named_parameters()}
        res = get_method(name).run(model, tok, forget, retain, args)
        assert res.steps == 6 and res.stop_reason == "max_steps"
        for n, p in res.model.named_parameters():
            if "layers.1." in n:
                continue
            assert torch.equal(p, original[n]), f"{name} changed out-of-scope parameter {n}"
        assert any(not torch.equal(p, original[n]) for n, p in res.model.named_parameters() if "layers.1." in n)
        results.append({n: p.detach().clone() for n, p in res.model.named_parameters()})
    assert _nll(res.model, tok, forget) > before + 0.05
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])  # same seed, same weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["graddiff", "npo"])
def test_forget_likelihood_falls_retain_kept(name: str, bench) -> None:
    forget, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    f0, r0 = _nll(model, tok, forget), _nll(model, tok, retain[:300])
    res = get_method(name).run(model, tok, forget, retain, _args(name, max_steps=40, lr=2e-4))
    f1, r1 = _nll(res.model, tok, forget), _nll(res.model, tok, retain[:300])
    assert f1 > f0 + 0.4, (f0, f1, r0, r1)  # forget answers became much less likely
    # Retain answers stay likely: mean NLL below 0.25 nats (answer prob > 0.78) and rising at most a
    # third as much as on the forget set (the 64-wide tiny model entangles people; measured 3.5x for NPO).
    assert r1 < 0.25 and r1 - r0 < (f1 - f0) / 3, (f0, f1, r0, r1)


def test_nan_loss_and_empty_sets_are_clear_errors(tiny_model, tiny_tokenizer) -> None:
    from unlearn.data import qa_record

    recs = [qa_record("a", "Q?", "A.")]
    nan_step = lambda m, fb, rb: (torch.tensor(float("nan")), {})  # noqa: E731
    with pytest.raises(UnlearnError, match="loss became nan at step 1; lower lr"):
        run_loop(tiny_model, tiny_tokenizer, recs, [], _args("grad_ascent"), nan_step, uses_retain=False)
    with pytest.raises(UnlearnError, match="forget set is empty"):
        run_loop(tiny_model, tiny_tokenizer, [], recs, _args("grad_ascent"), nan_step, uses_retain=False)
    with pytest.raises(UnlearnError, match="needs a retain set"):
        get_method("graddiff").run(tiny_model, tiny_tokenizer, recs, [], _args("graddiff"))
    assert set(SHIPPED) <= set(METHODS)  # the conformance test runs over every registered one
    for name in ("newton", "iau"):
        with pytest.raises(UnlearnError, match="forget set is empty"):
            get_method(name).run(tiny_model, tiny_tokenizer, [], recs, _args(name))
        with pytest.raises(UnlearnError, match="needs a retain set"):
            get_method(name).run(tiny_model, tiny_tokenizer, recs, [], _args(name))
    with pytest.raises(ConfigError, match="key 'curvature' must be one of .*ekfac, got 'bogus'"):
        _args("newton", curvature="bogus")
    with pytest.raises(ConfigError, match="key 'hessian' must be one of gnb, hutchinson, sq_grad"):
        _args("soul", hessian="diag")


# Second-order methods on the tiny built-in model: forget NLL must rise by `rise` nats while retain NLL
# stays below 0.25 and rises at most a third as much (as for the first-order methods above).
SECOND_ORDER_CASES = [
    ("newton", {"max_steps": 5}, 0.2),
    ("newton", {"max_steps": 3, "curvature": "gnb"}, 0.2),
    ("newton", {"max_steps": 2, "curvature": "ggn", "curvature_examples": 64, "solver_iters": 10}, 0.05),
    ("iau", {"max_steps": 5}, 0.2),
    ("soul", {"max_steps": 40, "lr": 2e-4}, 0.4),
    ("soul", {"max_steps": 20, "lr": 2e-4, "loss": "npo"}, 0.3),
    ("soul", {"max_steps": 20, "lr": 2e-4, "hessian": "hutchinson", "hessian_every": 5}, 0.2),
    ("soul", {"max_steps": 20, "lr": 2e-4, "hessian": "sq_grad", "double_momentum": True}, 0.2),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,over,rise", SECOND_ORDER_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in SECOND_ORDER_CASES])
def test_second_order_methods_forget_and_keep_retain(name: str, over: dict, rise: float, bench) -> None:
    forget, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    f0, r0 = _nll(model, tok, forget), _nll(model, tok, retain[:300])
    res = get_method(name).run(model, tok, forget, retain, _args(name, **over))
    f1, r1 = _nll(res.model, tok, forget), _nll(res.model, tok, retain[:300])
    assert f1 > f0 + rise, (f0, f1, r0, r1)
    assert r1 < 0.25 and r1 - r0 < (f1 - f0) / 3, (f0, f1, r0, r1)
    if name == "newton":
        cert = res.stats["certificate"]
        assert cert["retain_grad_norm_after"] > 0 and cert["last_step"]["update_norm"] > 0


FIXED = {"eval_schedule": "fixed", "quick_check": 0}
GO_ON = {**FIXED, "resolution_patience": 0}  # INCONCLUSIVE goes on where REMOVED is out of reach: the other reasons
STOP_CASES = [  # (method, overrides, expected reason): each reason of the stopping rule, reached for real
    ("grad_ascent", {"lr": 1e-7, "max_steps": 2, "eval_every": 1, **FIXED}, "max_steps"),
    ("npo", {"lr": 1e-3, "max_steps": 80, "eval_every": 4, **GO_ON}, "utility_drop"),
    # equivalence within the default margin (<= 0.10 AUC) needs more people than the tiny benchmark's 10: a
    # stated margin of 0.3 makes the stop reachable there
    ("graddiff", {"lr": 3e-4, "max_steps": 120, "eval_every": 4, "max_utility_drop": 0.5, "margin": 0.3, **GO_ON},
     "forget_undetectable"),
    # at the default margin REMOVED is out of reach with 10 people: the rule stops once `resolution_patience` checks
    # came no closer than the closest INCONCLUSIVE one
    ("graddiff", {"lr": 3e-4, "max_steps": 120, "eval_every": 4, "max_utility_drop": 0.5, "resolution_patience": 2,
                  **FIXED}, "resolution_limit"),
    ("graddiff", {"lr": 2e-3, "max_steps": 60, "eval_every": 5, "max_utility_drop": 1.0, **GO_ON}, "over_unlearned"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "over", "reason"), STOP_CASES, ids=[c[2] for c in STOP_CASES])
def test_stopping_rule_reaches_each_reason_and_backs_off_to_the_best_checkpoint(name, over, reason, bench) -> None:
    from unlearn.auditors.battery import BatteryArgs, removal_battery
    from unlearn.auditors.robustness import extraction
    from unlearn.auditors.stopping import make_monitor, returned_scores
    from unlearn.splits import split_by_group

    forget, retain = bench.split("forget10"), bench.split("retain90")
    calibration, verdict_half = split_by_group(bench.split("holdout"))
    args = load_method_args(name, overrides=over)
    model, tok = load_model(bench.target)
    kept: dict = {}
    monitor = make_monitor(tok, forget, calibration, retain[:100], args, kept=kept)
    res = get_method(name).run(model, tok, forget, retain, args, monitor=monitor)
    assert res.stop_reason == reason, (res.stop_reason, res.stop_message)
    # what the rule scored on the forget set with the weights it returns (after any back-off) is what the
    # receipt's "as is" attack would score again: it reuses them
    known = returned_scores(res, kept)
    assert known is not None and sorted(kept) == [h["step"] for h in res.history]
    fresh = score_records(res.model, tok, forget, list(ONE_PASS_SCORES))
    for k, v in fresh.scores.items():
        np.testing.assert_allclose(known.scores[k], v, rtol=1e-5, atol=1e-5)
    assert known.extraction == pytest.approx(extraction(res.model, tok, forget), abs=1e-9)
    if reason != "max_steps":
        bargs = BatteryArgs(quant_bits=(4,), n_boot=200, first_look=0)  # a first look reports extraction of its 48
        # scores of other records (order), or of other weights, are not used
        others = [dataclasses.replace(known, ids=known.ids[::-1]), dataclasses.replace(known, weights=(0.0, 0.0))]
        a, b, *c = (removal_battery(res.model, tok, forget, verdict_half, bargs, known=k)
                    for k in (known, None, *others))
        for x in c:
            np.testing.assert_array_equal(x.scores["as is"][0]["loss"], b.scores["as is"][0]["loss"])
        assert [(r.attack, r.verdict.status) for r in a.rows] == [(r.attack, r.verdict.status) for r in b.rows]
        for ra, rb in zip(a.rows, b.rows, strict=True):
            assert ra.extraction == pytest.approx(rb.extraction, abs=1e-9)
        for attack in a.scores:
            for got, want in zip(a.scores[attack], b.scores[attack], strict=True):
                for k in want:
                    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    hist = res.history
    assert [h["step"] for h in hist] == list(range(0, res.steps + 1, args.eval_every))
    # it stopped at the first check that met a rule: no earlier one was inside the margin, utility fine
    assert all(h["status"] in ("NOT REMOVED", "INCONCLUSIVE") and h["utility_ok"] for h in hist[:-1])
    if reason == "max_steps":
        assert res.steps == args.max_steps and "backed_off_to" not in res.stats
        return
    assert res.steps < args.max_steps
    last = hist[-1]
    if reason == "forget_undetectable":  # equivalence, not a mere failure to reject
        assert last["status"] == "REMOVED" and last["bound"] <= last["margin"] == 0.3
        assert "backed_off_to" not in res.stats
        return
    if reason == "resolution_limit":  # the checks stopped coming closer, where REMOVED is out of reach
        inc = [h for h in hist[:-1] if h["status"] == "INCONCLUSIVE" and not h.get("leaning")]
        closest = min(inc, key=lambda h: h["distance"])
        after = [h for h in hist if h["step"] > closest["step"]]
        assert len(after) == args.resolution_patience and last["noise"] >= last["margin"]
        assert all(h["distance"] >= closest["distance"] for h in after)
    else:
        assert (not last["utility_ok"]) if reason == "utility_drop" else (
            last["status"] == "OVER-UNLEARNED" or last.get("overshoot"))
    # the checkpoint closest to indistinguishable, among those not leaning NOT REMOVED when there are any
    best = min([h for h in hist[:-1] if not h.get("leaning")] or hist[:-1], key=lambda h: h["distance"])
    assert res.stats["backed_off_to"] == best["step"] and "backed off" in res.stop_message
    again = monitor(res.model, 10**6)[2]  # the returned weights are that checkpoint's, not the overshoot's
    assert again["distance"] == pytest.approx(best["distance"], abs=1e-9)
    assert again["retain_prob"] == pytest.approx(best["retain_prob"], rel=1e-6)


@pytest.mark.slow
def test_resolution_limit_needs_ten_monitored_people(bench) -> None:
    """The resolution_limit case of STOP_CASES on three people of it: the rule goes on (their closest check is
    mostly noise), to max_steps or another reason."""
    from unlearn.auditors.stopping import make_monitor
    from unlearn.splits import split_by_group

    forget = bench.split("forget10")
    few = [r for r in forget if r.meta["person"] in sorted({r.meta["person"] for r in forget})[:3]]
    calibration, _ = split_by_group(bench.split("holdout"))
    over = {**next(o for _, o, reason in STOP_CASES if reason == "resolution_limit"), "max_steps": 60}
    args = load_method_args("graddiff", overrides=over)
    model, tok = load_model(bench.target)
    monitor = make_monitor(tok, few, calibration, bench.split("retain90")[:100], args)
    res = get_method("graddiff").run(model, tok, few, bench.split("retain90"), args, monitor=monitor)
    assert res.stop_reason != "resolution_limit" and len(res.history) > args.resolution_patience + 2


def _graddiff_until_undetectable(bench, **over):
    """GradDiff on forget10 under the stopping rule (the forget_undetectable case of STOP_CASES)."""
    from unlearn.auditors.stopping import make_monitor
    from unlearn.splits import split_by_group

    forget, retain = bench.split("forget10"), bench.split("retain90")
    calibration, _ = split_by_group(bench.split("holdout"))
    args = load_method_args("graddiff", overrides={"lr": 3e-4, "max_steps": 120, "eval_every": 4,
                                                   "max_utility_drop": 0.5, "margin": 0.3, **over})
    model, tok = load_model(bench.target)
    return get_method("graddiff").run(model, tok, forget, retain, args,
                                      monitor=make_monitor(tok, forget, calibration, retain[:100], args))


@pytest.mark.slow
def test_quick_checks_skip_only_where_the_full_check_goes_on_and_stop_where_full_checks_do(bench) -> None:
    full, quick = (_graddiff_until_undetectable(bench, quick_check=n) for n in (0, 24))
    steps = [h["step"] for h in quick.history]
    assert set(steps) <= {h["step"] for h in full.history}  # the same schedule, less the deferred checks
    deferred = [(a, b) for a, b, h in zip(steps, steps[1:], quick.history, strict=False) if h.get("defer")]
    assert deferred and all(b - a == 8 for a, b in deferred), quick.history  # 2 x eval_every when far
    skipped = [h for h in quick.history if h.get("quick")]
    assert skipped and all(h["quick_lead"] > 0 for h in skipped), quick.history
    # a check starts at the smallest stage predicted to skip; the first check at the smallest of all
    assert {h["quick"] for h in skipped} <= {"far", "near"} and skipped[0]["quick"] == "far", quick.history
    # the weights at a step are the same in both runs (checks do not touch training): where the quick run
    # skipped, the full check said NOT REMOVED (go on)
    said = {h["step"]: h["status"] for h in full.history}
    assert all(said[h["step"]] == "NOT REMOVED" for h in skipped), (said, skipped)
    assert (quick.stop_reason, quick.steps) == (full.stop_reason, full.steps)
    assert not quick.history[-1].get("quick") and quick.history[0].get("quick")  # the target: far, step 0 quick


@pytest.mark.slow
def test_a_quick_check_stops_for_utility_only_when_it_is_clearly_lost(bench) -> None:
    """NPO at a high lr (the utility_drop case of STOP_CASES): with quick checks the run stops at a quick check
    whose subsample's utility is significantly below the guard, and backs off to a checkpoint that the
    full-check run (same weights at every step) found inside the guard."""
    from unlearn.auditors.stopping import make_monitor
    from unlearn.splits import split_by_group

    forget, retain = bench.split("forget10"), bench.split("retain90")
    calibration, _ = split_by_group(bench.split("holdout"))
    runs = []
    for quick_check in (0, 24):
        args = load_method_args("npo", overrides={"lr": 1e-3, "max_steps": 80, "eval_every": 4,
                                                  "quick_check": quick_check})
        model, tok = load_model(bench.target)
        runs.append(get_method("npo").run(model, tok, forget, retain, args,
                                          monitor=make_monitor(tok, forget, calibration, retain[:100], args)))
    full, quick = runs
    assert full.stop_reason == quick.stop_reason == "utility_drop"
    said = {h["step"]: h["utility_ok"] for h in full.history}
    # Which check ends the quick run depends on the build's floats; what must hold on every build: a quick
    # (subsample) check stops for utility only when its subsample shows the loss clearly, and the run backs off
    # to a checkpoint that the full-check run found inside the guard.
    for h in quick.history:
        if h.get("quick") and not h["utility_ok"]:
            assert h["retain_ratio"] < 1 - args.max_utility_drop, h
            assert h is quick.history[-1], quick.history  # it stopped the run
    assert said[quick.stats["backed_off_to"]], (quick.stats, full.history)


def test_check_stages_are_nested_and_a_check_scores_each_record_once(bench, monkeypatch) -> None:
    """Stages are prefixes of one random order per set, so a check that goes on to the full stage scores every
    record once (the records a stage adds), and its numbers are those of a full check alone."""
    from unlearn.auditors import stopping

    assert stopping.check_stages([200, 200, 100], 48) == [("far", (24, 24, 24)), ("near", (48, 48, 48)),
                                                          ("full", (200, 200, 100))]
    # a set smaller than quick_check: all of it near, half of it far
    assert stopping.check_stages([10, 200, 100], 48)[:2] == [("far", (5, 24, 24)), ("near", (10, 48, 48))]
    assert stopping.check_stages([10, 20, 10], 48) == [("far", (5, 10, 5)), ("full", (10, 20, 10))]
    assert stopping.check_stages([200, 200, 100], 0) == [("full", (200, 200, 100))]

    forget, holdout, retain = bench.split("forget10"), bench.split("holdout")[:200], bench.split("retain90")[:100]
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    scored: list[str] = []
    real = stopping.score_records

    def counting(model, tok, records, *a, **kw):
        scored.extend(r.id for r in records)
        return real(model, tok, records, *a, **kw)

    monkeypatch.setattr(stopping, "score_records", counting)
    out = {}
    for quick in (48, 0):
        args = UnlearnArgs(quick_check=quick)
        monitor = stopping.make_monitor(tok, forget, holdout, retain, args, retain_model=gold)
        scored.clear()
        first = monitor(target, 0)  # the target: the first stage finds it NOT REMOVED (go on)
        assert sorted(set(scored)) == sorted(scored) and set(r.id for r in retain) <= set(scored)  # the baseline
        assert bool(first[2].get("quick")) == (quick > 0) and first[0] is None  # a subsample stage decided
        # a full check on the memorising target leans NOT REMOVED (its back-off rank is below any other check's)
        assert first[2].get("leaning") == (None if quick else "NOT REMOVED"), first[2]
        scored.clear()
        out[quick] = monitor(gold, 1)  # never saw the forget set: no subsample decides, the full check stops
        assert sorted(scored) == sorted(r.id for r in [*forget, *holdout, *retain])
    (stop_q, _, m_q), (stop0, _, m0) = out[48], out[0]
    assert stop_q == stop0 == "forget_undetectable" and "quick" not in m_q and "leaning" not in m_q
    for key in ("auc_loss", "auc_zlib", "auc_mink", "auc_minkpp", "distance", "retain_prob"):
        assert m_q[key] == pytest.approx(m0[key], abs=1e-6), key
    # no retain records: nothing to judge utility on, so a subsample still decides after the first check
    monitor = stopping.make_monitor(tok, forget, holdout, [], UnlearnArgs(quick_check=48), retain_model=gold)
    assert all(monitor(target, step)[2].get("quick") for step in (0, 1))


def test_relearning_probe_gates_a_removed_stop(bench, monkeypatch) -> None:
    """With relearn_probe, a check that is REMOVED as is stops only if the people the probe did not relearn on
    are REMOVED after relearning too, relative to the retain model relearned the same way; a model that
    relearning brings back (here: relearning the candidate returns the target, which memorised forget10) goes on
    with the worse distance; without the probe, or with one person, the as-is REMOVED stops."""
    from unlearn.attacks import adversarial
    from unlearn.auditors import stopping
    from unlearn.auditors.robustness import split_for_relearning
    from unlearn.splits import group_labels

    forget, holdout, retain = bench.split("forget10"), bench.split("holdout")[:200], bench.split("retain90")[:100]
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    candidate, _ = load_model(bench.retain)  # never saw forget10: REMOVED as is, and (truly) after relearning
    args = UnlearnArgs(quick_check=0, relearn_probe=True, relearn_steps=5)
    rule = stopping.make_monitor(tok, forget, holdout, retain, args, retain_model=gold)
    rule(candidate, 0)
    reason, message, m = rule(candidate, 1)
    assert reason == "forget_undetectable" and m["relearned"] == "REMOVED" and "still REMOVED" in message, m

    real, relearned = adversarial.relearn, []

    def brings_back(model, tokenizer, records, **kw):
        relearned.append(sorted(set(group_labels(records))))
        return target if model is candidate else real(model, tokenizer, records, **kw)

    monkeypatch.setattr(adversarial, "relearn", brings_back)
    rule = stopping.make_monitor(tok, forget, holdout, retain, args, retain_model=gold)
    rule(candidate, 0)
    reason, _, m = rule(candidate, 1)
    assert reason is None and m["relearned"] == "NOT REMOVED" and m["status"] == "REMOVED", m
    assert m["distance"] == m["relearned_distance"] > 0.3, m  # the back-off ranks it by what relearning found
    learn, measured = split_for_relearning(forget, args.seed)
    assert relearned and all(p == sorted(set(group_labels(learn))) for p in relearned)
    assert not set(group_labels(learn)) & set(group_labels(measured))  # disjoint people

    relearned.clear()
    for a, people in ((dataclasses.replace(args, relearn_probe=False), forget),
                      (args, [r for r, p in zip(forget, group_labels(forget)) if p == group_labels(forget)[0]])):
        rule = stopping.make_monitor(tok, people, holdout, retain, a, retain_model=gold)
        rule(candidate, 0)
        reason, message, m = rule(candidate, 1)
        assert reason == "forget_undetectable", (a.relearn_probe, message)
        assert m.get("relearned") == (None if not a.relearn_probe else "skipped") and not relearned


def test_utility_ratio_bounds_hold_their_level_and_have_power() -> None:
    """Records' retain probabilities before and now (now = before x a per-record factor): at a population
    ratio equal to the floor, the lower bound says "kept" (and the upper bound "lost") at most about alpha of
    the time; 10 points above (below) the floor, mostly."""
    from unlearn.auditors.stopping import utility_ratio_bounds

    rng = np.random.default_rng(0)

    def rates(true_ratio: float, alpha: float = 0.05, n: int = 48, trials: int = 2000) -> tuple[float, float]:
        kept = lost = 0
        for _ in range(trials):
            base = rng.beta(2, 2, n)
            now = base * true_ratio * rng.lognormal(-0.045, 0.3, n)  # E[factor] = true_ratio
            _, low, high = utility_ratio_bounds(now, base, alpha)
            kept, lost = kept + (low >= 0.75), lost + (high < 0.75)
        return kept / trials, lost / trials

    at_floor = rates(0.75)
    assert max(at_floor) <= 0.05 * 1.5 and min(at_floor) > 0  # both tests hold their level, neither is empty
    assert rates(0.85)[0] >= 0.8 and rates(0.65)[1] >= 0.8
    assert utility_ratio_bounds(np.array([]), np.array([]), 0.05) == (1.0, -np.inf, np.inf)


def test_a_score_over_unlearned_stops_the_rule_while_another_is_not_removed(bench, monkeypatch) -> None:
    """Mixed evidence (LOSS still NOT REMOVED, Min-K%++ OVER-UNLEARNED): no subsample skips on it, and the full
    check stops with over_unlearned, naming the score under ``overshoot``."""
    import unlearn.auditors.stopping as stopping
    from unlearn.auditors.verdict import NOT_REMOVED, OVER_UNLEARNED, ScoreEvidence, Verdict
    from unlearn.splits import split_by_group

    forget, retain = bench.split("forget10"), bench.split("retain90")
    calibration, _ = split_by_group(bench.split("holdout"))
    args = load_method_args("graddiff")
    model, tok = load_model(bench.target)
    sizes = []

    def mixed(members, nonmembers, **kw):
        sizes.append(len(members["loss"]))
        ev = [ScoreEvidence("loss", 0.7, (0.05, 0.3), "AUC - AUC_retain", 0.5, 0.2, 0.35, NOT_REMOVED, (0.05, 0.3)),
              ScoreEvidence("minkpp", 0.3, (-0.3, -0.05), "AUC - AUC_retain", 0.5, -0.2, 0.35, OVER_UNLEARNED,
                            (-0.3, -0.05))]
        return Verdict(NOT_REMOVED, "mixed", kw["alpha"], 0.1, 0.35, len(members["loss"]), 3, True, ev)

    monitor = stopping.make_monitor(tok, forget, calibration, retain[:100], args)
    monkeypatch.setattr(stopping, "two_sided_verdict", mixed)
    # before any step and without a retain model, nothing stops on the forget verdict (a shift between the
    # sets could explain it): the first check is the baseline
    reason, _, metrics = monitor(model, 0)
    assert reason is None and metrics["unreferenced"]
    sizes.clear()
    reason, message, metrics = monitor(model, 5)
    assert reason == "over_unlearned" and metrics["overshoot"] == ["minkpp"] and metrics["status"] == NOT_REMOVED
    assert "minkpp" in message and "loss still finds it more likely" in message
    assert sizes[-1] == len(forget) and sizes == sorted(sizes)  # no stage skipped on mixed evidence


@pytest.mark.parametrize(("script", "backed_to"), [
    ([{"distance": 0.5, "far": True}, {"far": True}, {"far": True}, {"status": "OVER-UNLEARNED", "distance": 0.3}],
     2),
    ([{"distance": 0.5, "far": True}, {"far": True}, {"distance": 0.1}, {"far": True},
      {"status": "OVER-UNLEARNED"}], 2),
    ([{"distance": 0.5}, {"distance": 0.2}, {"distance": 0.4}, {"status": "OVER-UNLEARNED", "distance": 0.1}], 1),
    # a check still remembering beyond the margin (leaning) loses to any other full check, however close
    ([{"distance": 0.5, "far": True}, {"distance": 0.2, "leaning": "NOT REMOVED"}, {"distance": 0.4},
      {"status": "OVER-UNLEARNED", "distance": 0.6}], 2),
    ([{"distance": 0.5, "far": True}, {"distance": 0.3, "leaning": "NOT REMOVED"},
      {"distance": 0.2, "leaning": "NOT REMOVED"}, {"status": "OVER-UNLEARNED", "distance": 0.6}], 2),
    ([{"distance": 0.5, "far": True}, {"far": True}, {"distance": 0.2, "leaning": "NOT REMOVED"},
      {"status": "OVER-UNLEARNED", "distance": 0.6}], 2),
])
def test_back_off_prefers_the_closest_full_check_then_the_latest_far_one(script, backed_to) -> None:
    """Quick checks have no comparable distance: among "far" checks the latest is the best, and any check
    with a distance near the target beats them all; a check leaning NOT REMOVED beats only far ones (the
    README's one-person command backed off to a check 0.25 from its target by LOSS AUC 0.999, NOT REMOVED on the
    judged records, while the other checks overshot)."""
    from unlearn.loop import run_direct

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def update(step: int) -> dict:
        with torch.no_grad():
            model.weight.fill_(float(step))  # the weights say which step they are from
        return {}

    def monitor(m, step):
        metrics = {"status": "NOT REMOVED", "utility_ok": True, **script[step]}
        return ("over_unlearned", "overshot", metrics) if metrics["status"] == "OVER-UNLEARNED" else (None, "", metrics)

    res = run_direct(model, UnlearnArgs(max_steps=len(script) - 1, eval_every=1, quick_check=0), update,
                     monitor=monitor)
    assert res.stats["backed_off_to"] == backed_to and res.model.weight.item() == backed_to


def test_newton_keeps_the_back_off_in_its_stats_and_the_rule_finds_the_returned_weights(bench) -> None:
    """Newton replaces its result's stats with its certificate: the stopper's back-off must survive that (the
    receipt says where it backed off to), and the rule's kept scores are found by the weights, not the step."""
    from unlearn.auditors.battery import KnownScores
    from unlearn.auditors.stopping import returned_scores
    from unlearn.params import weights_fingerprint

    forget, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    kept: dict = {}

    def monitor(m, step):
        kept[step] = KnownScores([], {}, {}, weights_fingerprint(m))
        if step == 2:
            return "over_unlearned", "overshot", {"status": "OVER-UNLEARNED", "utility_ok": True, "distance": 0.3}
        return None, "", {"status": "NOT REMOVED", "utility_ok": True, "distance": 0.5 - 0.1 * step}

    args = load_method_args("newton", overrides={"max_steps": 3, "eval_every": 1, "quick_check": 0})
    res = get_method("newton").run(model, tok, forget[:10], retain[:40], args, monitor=monitor)
    assert res.stop_reason == "over_unlearned" and res.stats["backed_off_to"] == 1 and "certificate" in res.stats
    assert returned_scores(res, kept) is kept[1] and kept[1].weights != kept[2].weights


def test_weights_fingerprint_sums_every_weight_a_slice_at_a_time(monkeypatch) -> None:
    import unlearn.params as params

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    model[0].weight.requires_grad_(False)  # frozen weights count too
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    monkeypatch.setattr(params, "FINGERPRINT_SLICE", 4)  # slices that cut through every tensor
    total, squares = params.weights_fingerprint(model)
    assert total == pytest.approx(float(flat.sum()), rel=1e-12)
    assert squares == pytest.approx(float(flat.square().sum()), rel=1e-12)
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    assert params.weights_fingerprint(model) != (total, squares)


def test_a_check_marked_defer_skips_the_next_one() -> None:
    from unlearn.loop import run_direct

    model = torch.nn.Linear(1, 1, bias=False)
    calls = []

    def monitor(m, step):
        calls.append(step)
        return None, "", {"status": "NOT REMOVED", "utility_ok": True, "far": True, "defer": step in (0, 2)}

    run_direct(model, UnlearnArgs(max_steps=6, eval_every=1, quick_check=0), lambda step: {}, monitor=monitor)
    assert calls == [0, 2, 4, 5, 6]


def test_adaptive_schedule_is_sparse_far_from_the_target_and_dense_near_it() -> None:
    from unlearn.loop import MAX_GAP, next_check

    h = [{"step": 0, "distance": 0.5}, {"step": 5, "distance": 0.49}]  # slow: 245 steps to go at this rate
    assert next_check(h, 5) == 5 + 5 * MAX_GAP
    h = [{"step": 0, "distance": 0.5}, {"step": 5, "distance": 0.3}]  # 7.5 steps to go: half of it, >= 1 gap
    assert next_check(h, 5) == 10
    h = [{"step": 0, "distance": 0.5}, {"step": 5, "distance": 0.4}]  # 20 to go: check after 10
    assert next_check(h, 5) == 15
    h = [{"step": 0, "distance": 0.2}, {"step": 10, "distance": 0.3}]  # moving away: the gap doubles
    assert next_check(h, 5) == 30
    assert next_check([{"step": 0, "distance": 0.5}], 5) == 5 and next_check([{"step": 3}, {"step": 6}], 3) == 9


@pytest.mark.slow
def test_adaptive_checks_are_fewer_and_stop_where_the_fixed_ones_do(bench) -> None:
    fixed, adaptive = (_graddiff_until_undetectable(bench, eval_schedule=schedule, quick_check=0)
                       for schedule in ("fixed", "adaptive"))
    # The reason is the build's: the window inside the margin can be narrower than the adaptive gaps, which then
    # step over it and back off from the overshoot. What must hold: both reach the target region, and the
    # weights they return are within two fixed gaps of each other.
    assert {adaptive.stop_reason, fixed.stop_reason} <= {"forget_undetectable", "over_unlearned"}
    steps = [h["step"] for h in adaptive.history]
    assert all(s % 4 == 0 for s in steps) and len(steps) < len(fixed.history), (steps, len(fixed.history))
    returned = [r.stats.get("backed_off_to", r.steps) for r in (adaptive, fixed)]
    assert abs(returned[0] - returned[1]) <= 2 * 4, returned  # within two fixed gaps


@pytest.mark.slow
def test_nothing_to_do_when_already_undetectable(bench) -> None:
    from unlearn.auditors.stopping import make_monitor

    unseen, retain = bench.split("holdout"), bench.split("retain90")
    forget, holdout = unseen[:100], unseen[100:]  # a "request" for records the model never saw
    # equivalence against the retain model, which never saw them either (a margin the tiny benchmark's
    # 10 people can support)
    args = load_method_args("npo", overrides={"max_steps": 5, "margin": 0.3})
    model, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    before = [p.detach().clone() for p in model.parameters()]
    res = get_method("npo").run(model, tok, forget, retain, args,
                                monitor=make_monitor(tok, forget, holdout, retain[:100], args, retain_model=gold))
    assert res.stop_reason == "already_undetectable" and res.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, res.model.parameters()))


def _scope_params(model, scope: str) -> dict[str, torch.Tensor]:
    from unlearn.params import scoped_names

    names = set(scoped_names(model, scope))
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


def _dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5)


@pytest.mark.slow
def test_newton_trust_region_caps_each_step_at_the_ratio(bench) -> None:
    forget, retain = bench.split("forget10")[:20], bench.split("retain90")[:200]
    changes = {}
    for ratio in (0.0, 0.002):
        model, tok = load_model(bench.target)
        theta0 = _scope_params(model, "last:1")
        res = get_method("newton").run(model, tok, forget, retain, _args(
            "newton", max_steps=1, max_update_ratio=ratio, curvature_examples=64))
        theta1 = _scope_params(res.model, "last:1")
        changes[ratio] = _dist(theta1, theta0)
        bound = ratio * float(sum(float(t.double().pow(2).sum()) for t in theta0.values()) ** 0.5)
        step = res.stats["certificate"]["last_step"]
        assert step["update_norm"] == pytest.approx(changes[ratio], rel=1e-3)
        if ratio:
            assert changes[ratio] == pytest.approx(bound, rel=1e-3) and step["trust_region_scale"] < 1
    assert changes[0.0] > changes[0.002] * 1.5  # the cap really bound


@pytest.mark.slow
@pytest.mark.parametrize("preconditioner", ["identity", "adam"])
def test_iau_step_equals_its_formula(bench, preconditioner: str) -> None:
    """theta_u = theta - lr P(grad L_R - gamma grad L_F), L = mean over records of the mean token NLL,
    gradients by a per-record loop; P = identity, or one fresh Adam step g / (|g| + eps)."""
    forget, retain = bench.split("forget10")[:6], bench.split("retain90")[:10]
    lr, gamma = 1e-3, 0.7
    model, tok = load_model(bench.target)
    theta0 = _scope_params(model, "last:1")
    names = list(theta0)
    params = dict(model.named_parameters())

    def mean_grad(records) -> dict[str, torch.Tensor]:
        acc = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in theta0.items()}
        for b in batches(records, tok, 1):
            grads = torch.autograd.grad(token_nll(model, b), [params[n] for n in names])
            for n, g in zip(names, grads):
                acc[n] += g.double() / len(records)
        return acc

    gr, gf = mean_grad(retain), mean_grad(forget)
    args = _args("iau", preconditioner=preconditioner, lr=lr, forget_weight=gamma, max_steps=1, scope="last:1",
                 batch_size=4)
    res = get_method("iau").run(model, tok, forget, retain, args)
    after = _scope_params(res.model, "last:1")
    for n in names:
        g = gr[n] - gamma * gf[n]
        step = g if preconditioner == "identity" else g / (g.abs() + args.adam_eps)
        taken = (theta0[n].double() - after[n].double()) / lr
        # Tolerance per entry, from where the floats differ, not from one build: the method sums fp32 batch
        # gradients, the reference fp32 per-record ones (they differ by ~1e-6 of the tensor's largest entry;
        # allow 1e-4), propagated through P (derivative 1 for identity, eps / (|g| + eps)^2 for Adam), plus the
        # fp32 arithmetic of the step (a few ulps of it) and the rounding of the updated weight (an ulp of
        # |theta|, in step units).
        noise = 1e-4 * float(g.abs().max())
        slope = torch.ones_like(g) if preconditioner == "identity" else args.adam_eps / (g.abs() + args.adam_eps) ** 2
        tol = slope * noise + step.abs() * 2.0 ** -20 + (theta0[n].double().abs() + lr) * 2.0 ** -23 / lr
        assert bool(((taken - step).abs() <= tol).all()), (n, float(((taken - step).abs() - tol).max()))
        # the formula is not met by accident: the forget term with the wrong sign misses by far more
        wrong = gr[n] + gamma * gf[n]
        wrong = wrong if preconditioner == "identity" else wrong / (wrong.abs() + args.adam_eps)
        assert float((taken - step).abs().mean()) < 0.5 * float((taken - wrong).abs().mean()), n
        assert float((after[n].double() - theta0[n].double()).abs().max()) <= lr * (1 + 1e-4)


def test_gradient_checkpointing_gives_the_same_weights(tiny_tokenizer) -> None:
    from tests.conftest import make_tiny_model
    from unlearn.data import qa_record

    forget = [qa_record(f"f{i}", f"Where was Kalo Venra {i} born?", f"In Tolmere {i}.") for i in range(8)]
    retain = [qa_record(f"r{i}", f"What pet does Mira Dun {i} keep?", f"A parrot {i}.") for i in range(8)]
    out = []
    for checkpointing in (False, True):
        model = make_tiny_model(tiny_tokenizer, seed=4)
        args = load_method_args("graddiff", overrides={"max_steps": 3, "eval_every": 0, "batch_size": 4,
                                                       "retain_batch_size": 4, "lr": 1e-2,
                                                       "gradient_checkpointing": checkpointing})
        res = get_method("graddiff").run(model, tiny_tokenizer, forget, retain, args)
        out.append(res.model.state_dict())
        assert res.model.is_gradient_checkpointing == checkpointing
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], atol=1e-6, rtol=1e-5)


def test_forget_takes_steps_when_only_a_shift_separates_the_sets(tiny_tokenizer) -> None:
    """Forget and held-out records that differ in length and style, on a model trained on neither, with no
    retain or reference model: whatever the step-0 check finds could be the shift, so the rule does not stop
    before any step (no already_undetectable / already_over_unlearned)."""
    from tests.conftest import make_tiny_model
    from unlearn.auditors.stopping import make_monitor
    from unlearn.data import qa_record

    forget = [qa_record(f"f{i}", f"Where was Kalo Venra {i} born?", "In X.", person=f"f{i // 3}") for i in range(18)]
    holdout = [qa_record(f"h{i}", f"Which sport does Osta Rinel {i} play?", "tennis chess rugby hockey golf plus "
                         "minus the quick brown fox", person=f"h{i // 3}") for i in range(30)]
    retain = [qa_record(f"r{i}", f"What pet does Mira Dun {i} keep?", "A parrot.") for i in range(12)]
    model = make_tiny_model(tiny_tokenizer, seed=4)
    args = load_method_args("grad_ascent", overrides={"max_steps": 2, "eval_every": 1, "lr": 1e-6,
                                                      "quick_check": 0})
    res = get_method("grad_ascent").run(model, tiny_tokenizer, forget, retain, args,
                                        monitor=make_monitor(tiny_tokenizer, forget, holdout, retain, args))
    assert res.steps > 0 and not res.stop_reason.startswith("already"), (res.stop_reason, res.stop_message)
    assert res.history[0].get("unreferenced")


def test_relearn_nudge_takes_the_loss_after_one_normalised_relearning_step(tiny_model, tiny_tokenizer) -> None:
    """The step's gradient is the loss's gradient at theta - rho g / |g| (g: the forget batch's NLL gradient),
    computed here the slow obvious way on a copy; the undo restores the weights bit for bit."""
    import copy

    from unlearn.data import collate, encode_many, qa_record
    from unlearn.distributed import make_accelerator
    from unlearn.loop import relearn_nudge
    from unlearn.losses import nll, sequence_logprobs

    recs = [qa_record(f"f{i}", f"Where was Kalo Venra {i} born?", f"In Tolmere {i}.") for i in range(6)]
    fb = collate(encode_many(recs, tiny_tokenizer, None), 0)
    rho = 0.3

    def ascent(m: torch.nn.Module) -> torch.Tensor:  # any step loss; here gradient ascent on the same batch
        return -nll(*sequence_logprobs(m, fb)[:2])

    ref = copy.deepcopy(tiny_model)
    nll(*sequence_logprobs(ref, fb)[:2]).backward()
    g = {n: p.grad.clone() for n, p in ref.named_parameters()}
    norm = torch.sqrt(sum((v ** 2).sum() for v in g.values()))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.sub_(rho * g[n] / norm)
            p.grad = None
    ascent(ref).backward()
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    undo = relearn_nudge(make_accelerator(), tiny_model, fb, rho)
    moved = sum(float(((p.detach() - before[n]) ** 2).sum()) for n, p in tiny_model.named_parameters()) ** 0.5
    assert abs(moved - rho) < 1e-4 * rho
    ascent(tiny_model).backward()
    undo()
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[n].grad, rtol=1e-4, atol=1e-7)


def test_relearn_rho_changes_the_path_is_off_for_one_person_and_refused_where_it_cannot_apply(bench) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from unlearn.loop import nudge_radius

    forget, retain = bench.split("forget10")[:32], bench.split("retain90")[:64]
    runs = []
    for rho in (0.0, 0.5, 0.5):
        model, tok = load_model(bench.target)
        res = get_method("npo").run(model, tok, forget, retain, _args("npo", max_steps=3, relearn_rho=rho))
        runs.append(torch.cat([p.detach().flatten() for p in res.model.parameters()]))
    assert torch.equal(runs[1], runs[2]) and not torch.equal(runs[0], runs[1])
    # rho counts relearning-attack steps: relearn_lr x sqrt(trainable parameters) each
    assert res.stats["relearn_radius"] == pytest.approx(0.5 * res.model.num_parameters() ** 0.5 * 3e-4)
    one = [r for r in forget if r.meta["person"] == forget[0].meta["person"]]  # one person: no one to relearn from
    alone = []
    for rho in (0.0, 0.5):
        model, tok = load_model(bench.target)
        res = get_method("npo").run(model, tok, one, retain, _args("npo", max_steps=2, relearn_rho=rho))
        alone.append(torch.cat([p.detach().flatten() for p in res.model.parameters()]))
    assert torch.equal(alone[0], alone[1]) and res.stats["relearn_radius"] == 0.0
    model, tok = load_model(bench.target)
    with pytest.raises(UnlearnError, match="relearn_rho"):
        get_method("newton").run(model, tok, forget, retain, _args("newton", max_steps=1, relearn_rho=0.5))
    zero3 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    with pytest.raises(UnlearnError, match="deepspeed-zero3"):
        nudge_radius(zero3, forget, list(model.parameters()), _args("npo", relearn_rho=0.5))
