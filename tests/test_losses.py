from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import make_tiny_model
from unlearn.data import batches, qa_record
from unlearn.losses import ga_loss, graddiff_loss, nll, npo_loss, retain_kl, retain_nll, sequence_logprobs, simnpo_loss

LP = torch.tensor([-2.0, -6.0])
N = torch.tensor([2.0, 3.0])


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_losses_equal_hand_computation() -> None:
    assert float(nll(LP, N)) == pytest.approx((1.0 + 2.0) / 2)
    assert float(ga_loss(LP, N)) == pytest.approx(-1.5)
    assert float(retain_nll(LP, N)) == pytest.approx(1.5)
    assert float(graddiff_loss(LP, N, torch.tensor(0.7), gamma=2.0, alpha=3.0)) == pytest.approx(-3.0 + 2.1)
    ref = torch.tensor([-1.0, -4.0])  # lp - ref = [-1, -2]
    expected = -(2 / 0.1) * (_logsig(0.1) + _logsig(0.2)) / 2
    assert float(npo_loss(LP, ref, beta=0.1)) == pytest.approx(expected)
    expected = -(2 / 4.5) * (_logsig(4.5 * 1.0 - 0.5) + _logsig(4.5 * 2.0 - 0.5)) / 2
    assert float(simnpo_loss(LP, N, beta=4.5, delta=0.5)) == pytest.approx(expected)


def test_npo_at_reference_is_2_over_beta_log2_and_pushes_likelihood_down() -> None:
    lp = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss = npo_loss(lp, lp.detach(), beta=0.1)
    assert loss.item() == pytest.approx(2 / 0.1 * math.log(2))
    loss.backward()
    assert (lp.grad > 0).all()  # descending the loss lowers the log-likelihood


def test_sequence_logprobs_and_kl_against_explicit_loops(tiny_tokenizer) -> None:
    model, ref = make_tiny_model(tiny_tokenizer, seed=0), make_tiny_model(tiny_tokenizer, seed=1)
    recs = [qa_record("a", "Where was Kalo Venra born?", "In Tolmere."), qa_record("b", "Q?", "tennis chess")]
    batch = next(batches(recs, tiny_tokenizer, 2))
    lp, n, logits = sequence_logprobs(model, batch)
    ref_logits = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    kl_terms = []
    for b in range(2):
        total, count = 0.0, 0
        for t in range(batch.input_ids.shape[1] - 1):
            label = int(batch.labels[b, t + 1])
            if label == -100:
                continue
            logp = torch.log_softmax(logits[b, t].detach().double(), -1)
            total += float(logp[label])
            count += 1
            p_ref = torch.softmax(ref_logits[b, t].detach().double(), -1)
            kl_terms.append(float((p_ref * (p_ref.log() - logp)).sum()))
        assert lp[b].item() == pytest.approx(total, abs=1e-4) and int(n[b]) == count
    assert retain_kl(logits, ref_logits, batch.labels).item() == pytest.approx(sum(kl_terms) / len(kl_terms),
                                                                               abs=1e-5)
    assert retain_kl(logits, logits, batch.labels).item() == pytest.approx(0.0, abs=1e-6)


def test_forget_weight_scales_the_npo_and_simnpo_terms(tiny_model, tiny_tokenizer) -> None:
    from unlearn.data import batches, qa_record
    from unlearn.loop import frozen_copy
    from unlearn.methods import load_method_args
    from unlearn.methods.gradient import retain_term
    from unlearn.methods.npo import npo_step

    fb = next(iter(batches([qa_record("a", "Q?", "Some answer."), qa_record("b", "Q2?", "Other.")],
                           tiny_tokenizer, 2)))
    ref = frozen_copy(tiny_model)
    with torch.no_grad():  # move the model off the reference so the NPO term is not at its constant
        for p in tiny_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    losses = {}
    for w in (1.0, 0.125):
        args = load_method_args("npo", overrides={"forget_weight": w, "retain_weight": 0.0})
        losses[w], _ = npo_step(args, ref, retain_term(args, ref))(tiny_model, fb, None)
    assert losses[0.125].item() == pytest.approx(0.125 * losses[1.0].item(), rel=1e-6)
