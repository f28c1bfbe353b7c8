from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_model
from unlearn.attacks.runner import ONE_PASS_SCORES, parse_scores, score_records
from unlearn.attacks.scores import gradnorm_score, reference_score
from unlearn.data import encode, qa_record, text_record
from unlearn.errors import UnlearnError
from unlearn.logprobs import merged, prepare, token_logprobs


def _records() -> list:
    return [
        qa_record("a", "Where was Kalo Venra born?", "Kalo Venra was born in the town of Tolmere."),
        text_record("b", "The quick brown fox"),
        qa_record("c", "Which sport?", "tennis"),
        text_record("d", "plus minus 0123456789 The quick brown fox jumps over the lazy dog."),
        qa_record("e", "What pet does Mira Dun keep?", "A parrot."),
    ]


def _slow_reference(model, tok, rec, k: float) -> dict[str, float]:
    """One record at a time, no padding, explicit loops over tokens and the vocabulary."""
    ids, labels = encode(rec, tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lps, zs = [], []
    for t in range(len(ids) - 1):
        if labels[t + 1] == -100:
            continue
        logp = torch.log_softmax(logits[t], dim=-1)
        mu = sum(float(logp[v].exp() * logp[v]) for v in range(logp.shape[0]))
        ex2 = sum(float(logp[v].exp() * logp[v] ** 2) for v in range(logp.shape[0]))
        lp = float(logp[labels[t + 1]])
        lps.append(lp)
        zs.append((lp - mu) / math.sqrt(ex2 - mu * mu))
    mean = sum(lps) / len(lps)
    if rec.is_qa and len(lps) > 1:  # Min-K / Min-K++ leave the appended EOS out (open-unlearning)
        lps, zs = lps[:-1], zs[:-1]
    n_low = max(1, int(k * len(lps)))
    return {"loss": mean, "zlib": mean / len(zlib.compress(rec.response.encode())),
            "mink": sum(sorted(lps)[:n_low]) / n_low, "minkpp": sum(sorted(zs)[:n_low]) / n_low}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_scores_equal_per_example_reference(tiny_tokenizer, padding_side) -> None:
    model = make_tiny_model(tiny_tokenizer, seed=1)
    recs = _records()
    k = 0.3
    other = make_tiny_model(tiny_tokenizer, seed=2)
    table = score_records(model, tiny_tokenizer, recs, [*ONE_PASS_SCORES, "reference"], k=k, batch_size=3,
                          reference=other,
                          padding_side=padding_side)
    assert table.lengths.min() < table.lengths.max()  # the batches really are padded
    for i, rec in enumerate(recs):
        ref = _slow_reference(model, tiny_tokenizer, rec, k)
        ref["reference"] = ref["loss"] - _slow_reference(other, tiny_tokenizer, rec, k)["loss"]
        for name, value in ref.items():
            tol = 5e-5 if name == "minkpp" else 1e-5  # z-scores divide by an fp32 standard deviation
            assert table.scores[name][i] == pytest.approx(value, abs=tol), (name, rec.id, padding_side)



def test_minkpp_moments_equal_explicit_vocab_sums(tiny_tokenizer) -> None:
    model = make_tiny_model(tiny_tokenizer, seed=2)
    rec = _records()[0]
    tlp = token_logprobs(model, tiny_tokenizer, [rec, _records()[2]], batch_size=2)
    ids, labels = encode(rec, tiny_tokenizer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    col = 0
    for t in range(len(ids) - 1):
        if labels[t + 1] == -100:
            continue
        p = torch.softmax(logits[t], -1)
        mu = sum(p[v] * torch.log(p[v]) for v in range(p.shape[0]))
        var = sum(p[v] * torch.log(p[v]) ** 2 for v in range(p.shape[0])) - mu ** 2
        assert float(tlp.mu[0, col]) == pytest.approx(float(mu), abs=1e-5)
        assert float(tlp.var[0, col]) == pytest.approx(float(var), abs=1e-5)
        col += 1
    assert col == int(tlp.lengths[0])


def test_one_forward_pass_per_batch_for_all_one_pass_scores(tiny_tokenizer) -> None:
    model = make_tiny_model(tiny_tokenizer)
    calls = []
    model.base_model.register_forward_hook(lambda *a: calls.append(1))  # the decoder; logits per target chunk
    score_records(model, tiny_tokenizer, _records(), list(ONE_PASS_SCORES), batch_size=2)
    assert len(calls) == 3  # ceil(5 / 2) batches, shared by loss, zlib, mink and minkpp


def test_target_only_logits_and_length_sorting_match_the_full_logits_path(tiny_tokenizer, monkeypatch) -> None:
    import unlearn.logprobs as logprobs

    model = make_tiny_model(tiny_tokenizer, seed=5)
    recs = _records()
    chunked = token_logprobs(model, tiny_tokenizer, recs, batch_size=2)
    model.config.final_logit_softcapping = 3.0  # Gemma-2's output transform is applied on the chunked path too
    capped = token_logprobs(model, tiny_tokenizer, recs, batch_size=2)
    model.config.final_logit_softcapping = None
    monkeypatch.setattr(logprobs, "output_head", lambda m: None)  # the model's own [B, T, V] logits
    full = token_logprobs(model, tiny_tokenizer, recs, batch_size=2)
    one = [token_logprobs(model, tiny_tokenizer, [r], batch_size=1) for r in recs]  # no padding, no sorting
    assert chunked.ids == full.ids == [r.id for r in recs]
    for name in ("lp", "mu", "var", "hit"):
        torch.testing.assert_close(getattr(chunked, name), getattr(full, name), atol=1e-5, rtol=1e-5)
        for i, single in enumerate(one):
            n = int(single.lengths[0])
            torch.testing.assert_close(getattr(chunked, name)[i, :n], getattr(single, name)[0, :n], atol=1e-5,
                                       rtol=1e-5)
    assert torch.equal(chunked.mask, full.mask)
    assert not torch.allclose(capped.lp, chunked.lp)
    cap = 3.0 * torch.tanh(model(input_ids=torch.tensor([encode(recs[0], tiny_tokenizer)[0]])).logits[0].detach() / 3.0)
    ids, labels = encode(recs[0], tiny_tokenizer)
    first = next(t for t in range(len(ids) - 1) if labels[t + 1] != -100)
    expected = torch.log_softmax(cap[first].double(), -1)[ids[first + 1]]
    assert float(capped.lp[0, 0]) == pytest.approx(float(expected), abs=1e-5)


def test_prepared_batches_score_as_fresh_ones_for_every_model(tiny_tokenizer) -> None:
    recs = _records()
    batches = prepare(recs, tiny_tokenizer, batch_size=2)
    for seed in (1, 2):  # one preparation, several models (the battery's attacks, the stopping rule's checks)
        model = make_tiny_model(tiny_tokenizer, seed=seed)
        fresh = score_records(model, tiny_tokenizer, recs, list(ONE_PASS_SCORES), batch_size=2, hits=True)
        again = score_records(model, tiny_tokenizer, recs, list(ONE_PASS_SCORES), hits=True, prepared=batches)
        for name in ONE_PASS_SCORES:
            np.testing.assert_array_equal(fresh.scores[name], again.scores[name])
        assert torch.equal(fresh.logprobs.hit, again.logprobs.hit)
        assert torch.equal(fresh.logprobs.eos_last, again.logprobs.eos_last)
    with pytest.raises(ValueError, match="other records"):
        token_logprobs(model, tiny_tokenizer, recs[::-1], prepared=batches)


def _same_preparation(a, b) -> None:
    assert (a.ids, a.order) == (b.ids, b.order)
    assert torch.equal(a.eos_last, b.eos_last)
    assert len(a.batches) == len(b.batches)
    for x, y in zip(a.batches, b.batches, strict=True):
        for name in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(getattr(x, name), getattr(y, name))


def test_subsets_and_joins_of_prepared_batches_are_what_preparing_those_records_makes(tiny_tokenizer) -> None:
    recs = _records()
    whole = prepare(recs, tiny_tokenizer, batch_size=2)
    for positions in ([3, 0, 2], [1], list(range(len(recs)))[::-1]):
        _same_preparation(whole.subset(positions), prepare([recs[i] for i in positions], tiny_tokenizer, batch_size=2))
    first, rest = [2, 0], [i for i in range(len(recs)) if i not in (2, 0)]  # a first look and the rest
    parts = [prepare([recs[i] for i in p], tiny_tokenizer, batch_size=2) for p in (first, rest)]
    _same_preparation(merged(parts, [first, rest]), whole)


def test_reference_and_gradnorm(tiny_tokenizer) -> None:
    model = make_tiny_model(tiny_tokenizer, seed=3)
    recs = _records()
    t = token_logprobs(model, tiny_tokenizer, recs)
    assert torch.allclose(reference_score(t, t), torch.zeros(len(recs), dtype=torch.float64))
    g = gradnorm_score(model, tiny_tokenizer, recs[:2])
    for i, rec in enumerate(recs[:2]):
        model.zero_grad()
        ids, labels = encode(rec, tiny_tokenizer)
        if rec.is_qa:  # the appended EOS is left out, as open-unlearning's mia_gradnorm
            labels[len(labels) - 1] = -100
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
        assert float(g[i]) == pytest.approx(-norm, rel=1e-5)


def test_context_overflow_and_unknown_scores(tiny_tokenizer) -> None:
    model = make_tiny_model(tiny_tokenizer)
    model.config.max_position_embeddings = 8
    with pytest.raises(UnlearnError, match="longer than the model's context"):
        score_records(model, tiny_tokenizer, _records(), ["loss"])
    with pytest.raises(UnlearnError, match="unknown score.*known: loss"):
        parse_scores("loss,bogus")
    with pytest.raises(UnlearnError, match="needs a reference model"):
        score_records(model, tiny_tokenizer, _records(), ["reference"])
    assert np.all(np.isfinite(score_records(make_tiny_model(tiny_tokenizer), tiny_tokenizer, _records()[:1],
                                            ["loss"]).scores["loss"]))
