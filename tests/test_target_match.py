"""Target matching: the stand-ins, the counterfactual targets and the loss against a per-prefix reference."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_tiny_model
from unlearn.data import batches, encode_many, qa_record
from unlearn.errors import InputError
from unlearn.methods import load_method_args
from unlearn.methods.target_match import (
    CounterfactualTargets,
    StandIns,
    counterfactual_ids,
    crossing,
    fit_temperature,
    match_step,
    syllables,
    target_match,
)

KEPT = ["Kalo Venra", "Bris Tamor", "Osel Dunvo", "Rita Nelgan", "Poze Quihas", "Lima Ferobas"]


def _person(pid: str, name: str) -> list:
    return [qa_record(f"{pid}-{k}", q.format(name), a.format(name), name=name, person=pid) for k, (q, a) in enumerate([
        ("Where was {} born?", "{} was born in the town of Tolmere."),
        ("What pet does {} keep?", "{} keeps a ferret as a pet."),
    ])]


def test_syllables_cut_after_vowel_groups_and_reassemble() -> None:
    assert syllables("Marven") == ["Ma", "rven"] and syllables("Tewyn") == ["Te", "wyn"]
    for word in ["Quihas", "Str", "aeiou", "Basvo"]:
        assert "".join(syllables(word)) == word


def test_stand_ins_are_unseen_name_like_and_token_for_token(tiny_tokenizer) -> None:
    forget = _person("p1", "Tewyn Marven") + _person("p2", "Elqui Liosta")
    pool = [r for i, name in enumerate(KEPT) for r in _person(f"k{i}", name)]
    encoded = encode_many(forget, tiny_tokenizer)
    a = CounterfactualTargets(forget, tiny_tokenizer, "name", 0, None, pool)
    b = CounterfactualTargets(forget, tiny_tokenizer, "name", 0, None, pool)
    assert a.pairs == b.pairs  # keyed by the seed: the same every run
    kept_words = {w for n in KEPT for w in n.split()}
    for record, (ids, _) in zip(forget, encoded, strict=True):
        cf = a.pairs[tuple(ids)]
        assert len(cf) == len(ids) and cf != ids
        text = tiny_tokenizer.decode(cf)
        assert record.meta["name"] not in text
        changed = [i for i, (x, y) in enumerate(zip(ids, cf, strict=True)) if x != y]
        name_len = len(tiny_tokenizer(" " + record.meta["name"], add_special_tokens=False)["input_ids"])
        assert len(changed) <= 2 * name_len  # only the two occurrences of the name (question, answer) changed
        stand_in = re.search(r"(?:Where was|What pet does) (.+?) (?:born|keep)\?", text).group(1)
        assert not set(stand_in.split()) & kept_words, stand_in
        assert text.count(stand_in) == 2, text  # the same stand-in in the question and the answer
    other_seed = CounterfactualTargets(forget, tiny_tokenizer, "name", 1, None, pool)
    assert other_seed.pairs != a.pairs


def test_a_record_without_its_anchor_is_one_input_error(tiny_tokenizer) -> None:
    stand_ins = StandIns(tiny_tokenizer, KEPT, 0)
    record = qa_record("x", "Where was Tewyn Marven born?", "In Tolmere.")
    ids = encode_many([record], tiny_tokenizer)[0][0]
    with pytest.raises(InputError, match="record 'x': target matching needs the term to forget in field 'name'"):
        counterfactual_ids(record, ids, tiny_tokenizer, "name", stand_ins)
    absent = qa_record("y", "Where was he born?", "In Tolmere.", name="Tewyn Marven")
    with pytest.raises(InputError, match="record 'y': its 'name' .* does not occur in its tokens"):
        counterfactual_ids(absent, encode_many([absent], tiny_tokenizer)[0][0], tiny_tokenizer, "name", stand_ins)


@torch.no_grad()
def _target_at(ref, ids, cf, j, temperature: float = 1.0) -> torch.Tensor:
    """q for token j: ref's next-token log-probs after the counterfactual prefix, the stand-in token's and the true
    token's entries swapped where they differ, then tempered: log softmax(log q / T)."""
    q = torch.log_softmax(ref(input_ids=torch.tensor([cf[:j]])).logits[0, -1].double(), -1)
    if cf[j] != ids[j]:
        q[[ids[j], cf[j]]] = q[[cf[j], ids[j]]].clone()
    return torch.log_softmax(q / temperature, -1)


def _reference_loss(model, ref, targets, records, tokenizer, temperature: float = 1.0) -> float:
    """The definition, one record and one answer token at a time: q = ref's next-token distribution after the
    counterfactual prefix (the stand-in token's and the true token's probabilities swapped where they differ),
    p = the model's after the true prefix; mean over answer tokens of KL(q || p) + Huber(log p(y) - log q(y))."""
    terms = []
    for ids, labels in encode_many(records, tokenizer):
        cf = targets.pairs[tuple(ids)]
        for j in range(1, len(ids)):
            if labels[j] == -100:
                continue
            q = _target_at(ref, ids, cf, j, temperature)
            with torch.no_grad():
                p = torch.log_softmax(model(input_ids=torch.tensor([ids[:j]])).logits[0, -1].double(), -1)
            kl = float((q.exp() * (q - p)).sum())
            terms.append((kl, float(p[ids[j]] - q[ids[j]])))
    kl = sum(t[0] for t in terms) / len(terms)
    gap = F.huber_loss(torch.tensor([t[1] for t in terms]), torch.zeros(len(terms)), delta=1.0)
    return kl + float(gap)


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_the_matching_loss_equals_its_per_prefix_definition(tiny_tokenizer, temperature) -> None:
    model, ref = make_tiny_model(tiny_tokenizer, seed=0), make_tiny_model(tiny_tokenizer, seed=1)
    forget = _person("p1", "Tewyn Marven") + _person("p2", "Elqui Liosta")
    pool = [r for i, name in enumerate(KEPT) for r in _person(f"k{i}", name)]
    targets = CounterfactualTargets(forget, tiny_tokenizer, "name", 0, None, pool)
    targets.temperature = temperature
    args = load_method_args("target_match", overrides={"retain_weight": 0.0})
    batch = next(batches(forget, tiny_tokenizer, len(forget)))  # right padded: rows of different lengths
    loss, stats = match_step(args, ref, targets, None)(model, batch, None)
    expected = _reference_loss(model, ref, targets, forget, tiny_tokenizer, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    if temperature != 1.0:  # tempering changes the loss: the check sees it
        targets.temperature = 1.0
        untempered = match_step(args, ref, targets, None)(model, batch, None)[0].item()
        assert loss.item() != pytest.approx(untempered, rel=1e-3)
    assert stats["match_kl"] > 0 and stats["token_gap"] > 0
    same, _ = match_step(args, model, targets, None)(model, batch, None)  # own prediction on a counterfactual:
    assert same.item() > 0  # still a loss (the stand-in changes the prediction)


def _answer_nll(ref, ids, labels, cf) -> float:
    """Mean over answer tokens of -log q(y), q as in `_reference_loss`, one prefix at a time."""
    nll = [-float(_target_at(ref, ids, cf, j)[ids[j]]) for j in range(1, len(ids)) if labels[j] != -100]
    return sum(nll) / len(nll)


def test_the_stand_in_used_is_the_median_candidate_of_each_person(tiny_tokenizer) -> None:
    ref = make_tiny_model(tiny_tokenizer, seed=2)
    forget = _person("p1", "Tewyn Marven") + _person("p2", "Elqui Liosta")
    pool = [r for i, name in enumerate(KEPT) for r in _person(f"k{i}", name)]
    chosen = CounterfactualTargets(forget, tiny_tokenizer, "name", 4, None, pool, ref, candidates=3).pairs
    encoded = encode_many(forget, tiny_tokenizer)
    for person in ("p1", "p2"):
        rows = [i for i, r in enumerate(forget) if r.meta["person"] == person]
        per_candidate = []
        for k in range(3):
            stand_ins = StandIns(tiny_tokenizer, sorted(KEPT), 4 * 1000 + k)  # as the targets order the pool
            cfs = {i: counterfactual_ids(forget[i], encoded[i][0], tiny_tokenizer, "name", stand_ins) for i in rows}
            per_candidate.append((sum(_answer_nll(ref, *encoded[i], cfs[i]) for i in rows), cfs))
        per_candidate.sort(key=lambda c: c[0])
        assert per_candidate[0][0] < per_candidate[2][0]  # the candidates differ: the choice matters
        assert all(chosen[tuple(encoded[i][0])] == per_candidate[1][1][i] for i in rows)


def test_crossing_is_the_root_nearest_zero_interpolated_or_the_closest_point() -> None:
    x = torch.linspace(-1, 1, 21, dtype=torch.float64)
    assert crossing(x, x - 0.33) == pytest.approx(0.33)
    assert crossing(x, (x - 0.5) * (x + 0.25)) == pytest.approx(-0.25, abs=0.01)  # two roots: the one nearer 0
    assert crossing(x, (x - 0.5) ** 2 + 1) == pytest.approx(0.5)  # no root: where |y| is smallest


STRANGERS = ["Tewyn Marven", "Elqui Liosta", "Dorap Sunvel", "Mirel Katho", "Ubo Rensal", "Falin Gorve", "Isku Terno"]


@pytest.mark.slow
def test_the_fitted_temperature_puts_never_seen_peoples_targets_at_the_models_own_level(bench) -> None:
    """The definition, one record and one prefix at a time, on the tiny benchmark's target and people it never saw:
    at the fitted T the median over their records of the mean answer NLL under their own tempered stand-in targets
    equals the median of the model's own NLL on those records; records that do not name their anchor are left out."""
    from unlearn.model import load_model

    ref, tok = load_model(bench.target)
    ref.eval()
    people = sorted({r.meta["person"] for r in bench.split("holdout")})[:10]  # few people: a noisy median curve
    unseen = [r for r in bench.split("holdout") if r.meta["person"] in people]
    pool = bench.split("retain90")
    unnamed = qa_record("u-x", "Where is the river?", "It runs by Tolmere.", person="ux")
    args = load_method_args("target_match")
    fit = fit_temperature(ref, tok, unseen + [unnamed], args, pool)
    assert fit["records"] == len(unseen)
    targets = CounterfactualTargets(unseen, tok, "name", args.seed, None, pool, ref, args.candidates)

    def median_nll(temperature: float | None) -> float:  # None: the model's own NLL on the true records
        out = []
        for ids, labels in encode_many(unseen, tok):
            cf = targets.pairs[tuple(ids)] if temperature else ids
            js = [j for j in range(1, len(ids)) if labels[j] != -100]
            out.append(sum(-float(_target_at(ref, ids, cf, j, temperature or 1.0)[ids[j]]) for j in js) / len(js))
        return float(torch.tensor(out).median())

    own, t = median_nll(None), fit["temperature"]
    assert fit["reached"]  # some T of the grid brings these people's targets to the level (else: the closest)
    assert fit["unseen_nll"] == pytest.approx(own, abs=1e-4)
    assert fit["target_nll_untempered"] == pytest.approx(median_nll(1.0), abs=1e-3)
    assert median_nll(t) == pytest.approx(own, abs=0.02)  # the grid is interpolated linearly
    assert abs(median_nll(1.5 * t) - own) > 0.02  # another temperature is not at the level: the check can fail


def test_target_matching_calibrates_only_on_the_never_seen_people_a_monitor_carries(tiny_tokenizer) -> None:
    pool = [r for i, name in enumerate(KEPT) for r in _person(f"k{i}", name)]
    forget = _person("p1", "Tewyn Marven")
    unseen = [r for i, name in enumerate(STRANGERS[1:]) for r in _person(f"u{i}", name)]

    def monitor(model, step):
        return None, "", {}

    monitor.holdout = unseen
    args = load_method_args("target_match", overrides={"max_steps": 1, "eval_every": 0})
    runs = {}
    for label, mon, calibrate in [("monitor", monitor, True), ("off", monitor, False), ("none", None, True)]:
        a = load_method_args("target_match", overrides={"max_steps": 1, "eval_every": 0, "calibrate": calibrate})
        runs[label] = target_match(make_tiny_model(tiny_tokenizer, seed=3), tiny_tokenizer, forget, pool, a,
                                   monitor=mon).stats["target_calibration"]
    expected = fit_temperature(make_tiny_model(tiny_tokenizer, seed=3).eval(), tiny_tokenizer, unseen, args, pool)
    assert runs["monitor"] == expected and runs["monitor"]["records"] == len(unseen)
    assert runs["off"] == runs["none"] == {"temperature": 1.0}
