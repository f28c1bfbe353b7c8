"""Worst-case forget sets, relearning and extraction attacks on the tiny built-in benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unlearn.attacks.adversarial import project_capped_simplex, random_sets, top_k, worst_case_set
from unlearn.attacks.runner import score_records
from unlearn.auditors.robustness import extraction, relearn_report
from unlearn.methods import get_method, load_method_args
from unlearn.model import load_model
from unlearn.params import restore, snapshot


def test_capped_simplex_projection_and_top_k() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 5, 17):
        v = rng.normal(size=40) * 3
        w = project_capped_simplex(v, k)
        assert w.min() >= 0 and w.max() <= 1 and w.sum() == pytest.approx(k, abs=1e-6)
        assert len(top_k(w, k)) == k and len(set(top_k(w, k))) == k
        # optimality: it is the closest such point (no random feasible point is closer)
        for _ in range(20):
            u = project_capped_simplex(rng.random(40), k)
            assert np.linalg.norm(w - v) <= np.linalg.norm(u - v) + 1e-9
    assert random_sets(30, 5, 3, seed=1) == random_sets(30, 5, 3, seed=1)


def _ga(tok, retain, steps):
    args = load_method_args("grad_ascent", overrides={"max_steps": steps, "eval_every": 0, "lr": 1e-3})
    return lambda m, recs: get_method("grad_ascent").run(m, tok, recs, retain, args)


@pytest.mark.slow
def test_worst_case_set_beats_random_sets_and_is_reproducible(bench) -> None:
    pool, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    theta0 = snapshot(model)
    k = 20
    wc = worst_case_set(model, tok, pool, k, _ga(tok, retain, 8), rounds=3, seed=0)
    again = worst_case_set(model, tok, pool, k, _ga(tok, retain, 8), rounds=3, seed=0)
    assert len(wc.indices) == k and wc.indices == again.indices
    assert all((v == theta0[n]).all() for n, v in model.state_dict().items())  # model restored

    def residual(idx: list[int]) -> float:  # mean LOSS score of the set after unlearning it (higher = member)
        recs = [pool[i] for i in idx]
        _ga(tok, retain, 8)(model, recs)
        s = float(score_records(model, tok, recs, ["loss"]).scores["loss"].mean())
        restore(model, theta0)
        return s

    worst = residual(wc.indices)
    rand = [residual(s) for s in random_sets(len(pool), k, 4, seed=0)]
    assert worst > np.mean(rand) + 2 * np.std(rand), (worst, rand)


@pytest.mark.slow
def test_relearning_target_recovers_fully_retrained_model_only_from_scratch(bench) -> None:
    forget, holdout = bench.split("forget10"), bench.split("holdout")
    target, tok = load_model(bench.target)
    retrained, _ = load_model(bench.retain)
    original = extraction(target, tok, forget)["exact_match"]  # the whole forget set; halves are near it
    t = relearn_report(target, tok, forget, holdout, steps=15, original_exact_match=original)
    r = relearn_report(retrained, tok, forget, holdout, steps=15, original_exact_match=original)
    assert t["before"]["exact_match"] >= 0.95  # the target still knows the evaluated half
    assert t["after"]["exact_match"] >= t["before"]["exact_match"] - 0.05  # relearning others does not erase it
    assert t["after"]["loss_auc"] > 0.9  # and the relearning steps do not hide it
    # The retrained model never saw the evaluated people: relearning other forget people's facts brings
    # them back no further than the same fine-tuning brings back holdout people (learning from scratch).
    h = relearn_report(retrained, tok, holdout, forget, steps=15)
    assert r["after"]["exact_match"] <= h["after"]["exact_match"] + 0.1, (r["after"], h["after"])
    assert r["after"]["loss_auc"] < 0.75 and r["recovered_fraction"] < 0.3, r
    ext = extraction(target, tok, forget)
    assert ext["exact_match"] >= 0.95 and extraction(retrained, tok, forget)["exact_match"] < 0.3


@pytest.mark.slow
def test_cli_audit_attacks_and_worst_case(tmp_path: Path, bench, capsys) -> None:
    from unlearn.cli.main import main

    assert main(["audit", "--preset", "tiny", "--attacks", "relearn,extract", "--relearn-steps", "5", "--json",
                 "--out", str(tmp_path / "a")]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["attacks"]) == {"relearn", "extract"}
    assert payload["attacks"]["extract"]["members"]["exact_match"] > payload["attacks"]["extract"]["nonmembers"][
        "exact_match"]
    assert main(["audit", "--preset", "tiny", "--attacks", "bogus", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
    capsys.readouterr()
    assert main(["worst-case", "--preset", "tiny", "--method", "grad_ascent", "--k", "10", "--rounds", "2",
                 "--lower-steps", "2", "--max-steps", "4", "--random-sets", "2", "--out", str(tmp_path / "w"),
                 "--json"]) == 0
    wc = json.loads(capsys.readouterr().out)
    assert len(wc["selected_ids"]) == 10 and [r["set"] for r in wc["rows"]] == ["worst-case", "random-1", "random-2"]
    ids = [json.loads(line)["id"] for line in (tmp_path / "w" / "selected.jsonl").read_text().splitlines()]
    assert ids == wc["selected_ids"] and "privleak" in wc["gap"]


def test_battery_extraction_comes_from_the_scoring_pass(bench) -> None:
    """The battery's scores and extraction from one forward pass equal the two computed apart."""
    from unlearn.auditors.battery import forget_holdout_scores, scores_and_extraction

    forget, holdout = bench.split("forget10")[:30], bench.split("holdout")[:20]
    target, tok = load_model(bench.target)
    (fm, hm), ext = scores_and_extraction(target, tok, forget, holdout)
    apart_f, apart_h = forget_holdout_scores(target, tok, forget, holdout)
    for k in apart_f:
        np.testing.assert_allclose(fm[k], apart_f[k], rtol=1e-9)
        np.testing.assert_allclose(hm[k], apart_h[k], rtol=1e-9)
    assert ext == pytest.approx(extraction(target, tok, forget))
    assert ext["exact_match"] > 0.5  # the target memorised its training people: the comparison is not of zeros


def test_battery_stops_at_the_first_not_removed_unless_exhaustive(bench) -> None:
    """The attacks after the first NOT REMOVED cannot change the worst case: not run (and named), unless asked;
    the retain model is attacked only as far as the battery goes. An attack that does not say NOT REMOVED
    (the retain model judged against itself) lets the next one run."""
    from unlearn.auditors.battery import BatteryArgs, removal_battery

    forget, holdout = bench.split("forget10")[:40], bench.split("holdout")[:60]
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    short = removal_battery(target, tok, forget, holdout, BatteryArgs(n_boot=100), retain_model=gold)
    full = removal_battery(target, tok, forget, holdout, BatteryArgs(n_boot=100, exhaustive=True), retain_model=gold)
    assert [r.attack for r in full.rows] == ["as is", "8-bit RTN", "4-bit RTN"]
    assert [r.attack for r in short.rows] == ["as is"] and short.rows[0].verdict.status == "NOT REMOVED"
    assert "not run: 8-bit RTN, 4-bit RTN" in short.notes[0] and set(short.reference) == {"as is"}
    assert short.verdict.status == full.verdict.status == "NOT REMOVED"
    assert short.rows[0].verdict == full.rows[0].verdict
    itself = removal_battery(gold, tok, forget, holdout, BatteryArgs(n_boot=100), retain_model=gold)
    assert [r.attack for r in itself.rows] == ["as is", "8-bit RTN", "4-bit RTN"] and not itself.notes


def test_a_first_look_decides_only_not_removed_and_otherwise_changes_nothing(bench) -> None:
    """Each attack first scores a random subset of each set: NOT REMOVED there (at a stricter level) is its
    verdict and the rest is not scored; any other first look goes on to every record, and then the verdicts and
    scores are those of one look at everything."""
    import dataclasses

    from unlearn.auditors.battery import BatteryArgs, forget_holdout_scores, look_order, removal_battery

    forget, holdout = bench.split("forget10")[:60], bench.split("holdout")[:80]
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    args = BatteryArgs(n_boot=100, first_look=24)
    looked = removal_battery(target, tok, forget, holdout, args, retain_model=gold)
    (row,) = looked.rows
    assert row.verdict.status == "NOT REMOVED" and row.verdict.members == 24
    # one family per receipt: a look's alpha is its share of alpha over the plan's three attacks
    assert row.verdict.alpha == pytest.approx(args.alpha * args.first_look_share / 3)
    assert "first look at 24 of 60 forget and 24 of 80 held-out" in looked.notes[0]
    fl, hl = look_order(60, 80, args)
    assert [len(x) for x in fl] == [24, 36] and not set(fl[0]) & set(fl[1])
    alone_f, alone_h = forget_holdout_scores(target, tok, [forget[i] for i in fl[0]], [holdout[i] for i in hl[0]])
    np.testing.assert_allclose(looked.scores["as is"][0]["loss"], alone_f["loss"], rtol=1e-5)
    np.testing.assert_allclose(looked.reference["as is"][1]["minkpp"],
                               forget_holdout_scores(gold, tok, [forget[i] for i in fl[0]],
                                                     [holdout[i] for i in hl[0]])[1]["minkpp"], rtol=1e-5)
    itself, whole = (removal_battery(gold, tok, forget, holdout, a, retain_model=gold)
                     for a in (args, dataclasses.replace(args, first_look=0)))
    assert [r.attack for r in itself.rows] == [r.attack for r in whole.rows] == ["as is", "8-bit RTN", "4-bit RTN"]
    for i, (a, b) in enumerate(zip(itself.rows, whole.rows, strict=True)):
        spent = 1 - args.first_look_share if i == 0 else 1  # the first attack's look at everything: the rest
        assert (a.verdict.status, a.verdict.members) == (b.verdict.status, 60)
        assert (a.verdict.alpha, b.verdict.alpha) == pytest.approx((args.alpha * spent / 3, args.alpha / 3))
        assert [e.auc for e in a.verdict.evidence] == pytest.approx([e.auc for e in b.verdict.evidence], abs=1e-6)
        assert a.extraction == pytest.approx(b.extraction, abs=1e-9)
    np.testing.assert_allclose(itself.scores["4-bit RTN"][0]["zlib"], whole.scores["4-bit RTN"][0]["zlib"], rtol=1e-5)


def test_the_relearning_attacks_relearn_different_halves_and_judge_the_rest(bench) -> None:
    """relearn_splits attacks, each fine-tuning on one half of the forget people (seed, seed + 1, ...) and
    measured on the other half; the retain model is relearned alike for each."""
    from unlearn.auditors.battery import BatteryArgs, battery_plan, removal_battery

    forget, holdout = bench.split("forget10")[:60], bench.split("holdout")[:60]
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)
    args = BatteryArgs(n_boot=50, relearn=True, relearn_splits=3, relearn_steps=2, quant_bits=(), exhaustive=True)
    plan, notes = battery_plan(tok, forget, args)
    assert [name for name, _, _ in plan] == ["as is", "relearn", "relearn #2", "relearn #3"] and not notes
    people = {r.meta["person"] for r in forget}
    halves = [frozenset(r.meta["person"] for r in measured) for _, _, measured in plan[1:]]
    assert len(set(halves)) > 1 and all(0 < len(h) < len(people) for h in halves)
    out = removal_battery(target, tok, forget, holdout, args, retain_model=gold)
    assert [r.attack for r in out.rows] == ["as is", "relearn", "relearn #2", "relearn #3"]
    for (name, _, measured), row in zip(plan, out.rows, strict=True):
        assert row.verdict.members == len(measured) and set(out.reference[name][0]) == set(out.scores[name][0])
