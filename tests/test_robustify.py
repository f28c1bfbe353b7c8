"""The robustification stage: shrink-and-perturb statistics, the distillation loss against a loop, the stage's stop."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import make_tiny_model
from unlearn.data import batches, qa_record
from unlearn.methods import load_method_args
from unlearn.robustify import all_positions_kl, robustify, shrink_perturb


def test_shrink_perturb_moves_matrices_toward_xavier_noise_and_only_shrinks_vectors() -> None:
    w, v = torch.nn.Parameter(torch.randn(400, 300)), torch.nn.Parameter(torch.randn(300))
    w0, v0 = w.detach().clone(), v.detach().clone()
    shrink_perturb([w, v], alpha=0.5, beta=0.1, seed=3)
    assert torch.equal(v, 0.5 * v0)
    noise = (w.detach() - 0.5 * w0) / (0.5 * 0.1)  # the Xavier-uniform draw
    bound = (6 / (400 + 300)) ** 0.5
    assert noise.abs().max() <= bound * (1 + 1e-5)
    # uniform on [-b, b]: mean 0 and variance b^2 / 3, within 5 standard errors over 120,000 draws
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 * bound / (3 * n) ** 0.5
    assert noise.var().item() == pytest.approx(bound ** 2 / 3, rel=5 * (0.8 / n) ** 0.5)
    again = torch.nn.Parameter(w0.clone())
    shrink_perturb([again], alpha=0.5, beta=0.1, seed=3)
    assert torch.equal(again, w)  # the seed decides the noise


def test_all_positions_kl_equals_a_loop(tiny_tokenizer) -> None:
    student, teacher = make_tiny_model(tiny_tokenizer, seed=0), make_tiny_model(tiny_tokenizer, seed=1)
    recs = [qa_record("a", "Where was Kalo Venra born?", "In Tolmere."), qa_record("b", "Q?", "tennis")]
    batch = next(batches(recs, tiny_tokenizer, 2))
    s, t = student(input_ids=batch.input_ids).logits, teacher(input_ids=batch.input_ids).logits
    terms = []
    for b in range(2):
        for pos in range(int(batch.attention_mask[b].sum()) - 1):
            p_t = torch.softmax(t[b, pos].detach().double(), -1)
            terms.append(float((p_t * (p_t.log() - torch.log_softmax(s[b, pos].detach().double(), -1))).sum()))
    assert all_positions_kl(s, t, batch.attention_mask).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def _trained(tokenizer, records):
    model = make_tiny_model(tokenizer, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(batches(records, tokenizer, len(records)))
    for _ in range(40):
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_the_stage_repairs_toward_the_teacher_and_reports_it(tiny_tokenizer) -> None:
    retain = [qa_record(f"r{i}", f"What is {i} plus 1?", f"{i} plus 1 is {i + 1}.") for i in range(40)]
    model = _trained(tiny_tokenizer, retain)
    teacher = copy.deepcopy(model)
    args = load_method_args("graddiff", overrides={"robustify_alpha": 0.5, "robustify_steps": 30,
                                                   "robustify_tolerance": 0.0, "retain_batch_size": 8})
    res = robustify(model, tiny_tokenizer, retain, args)
    stats = res.stats
    assert stats["alpha"] == 0.5 and res.steps == 30 and stats["repaired"] is False
    batch = next(batches(retain, tiny_tokenizer, 40))
    with torch.no_grad():
        kl = all_positions_kl(res.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                              teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                              batch.attention_mask)
        perturbed = copy.deepcopy(teacher)
        shrink_perturb(list(perturbed.parameters()), 0.5, 0.1, args.seed)
        kl0 = all_positions_kl(perturbed(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                               teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                               batch.attention_mask)
    assert kl < kl0 / 2  # the distillation pulled the perturbed weights back toward the teacher
    with pytest.raises(Exception, match="robustify_alpha"):
        load_method_args("npo", overrides={"robustify_alpha": 1.0})
