"""Membership scores as plain functions of `TokenLogProbs` (higher = more likely a member)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from unlearn.data import Record, batches
from unlearn.logprobs import TokenLogProbs, max_length_of
from unlearn.training import token_nll


def loss_score(t: TokenLogProbs) -> torch.Tensor:
    """LOSS (Yeom et al.): mean_t lp_t, i.e. minus the mean token NLL. ``[N]``"""
    return t.mean_lp()


def zlib_score(t: TokenLogProbs, texts: Sequence[str]) -> torch.Tensor:
    """zlib (Carlini et al. 2021): mean_t lp_t / len(zlib.compress(text)), sign kept (higher = member)."""
    sizes = torch.tensor([len(zlib.compress(s.encode("utf-8"))) for s in texts], dtype=torch.float64)
    return t.mean_lp() / sizes


def min_k_count(n_tokens: torch.Tensor, k: float) -> torch.Tensor:
    """How many lowest tokens Min-K% averages: ``max(1, int(k * T))`` (floor), as the Min-K% and Min-K%++
    authors' code, mimir, MUSE and open-unlearning take it (k * T in float64, like Python's float)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return torch.floor(n_tokens.double() * k).clamp(min=1).long()


def _lowest_k_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """Per row, the mean of the lowest ``min_k_count(T_row, k)`` masked values. ``values, mask: [N, T]``"""
    filled = values.masked_fill(~mask, math.inf)
    ordered = filled.sort(dim=1).values
    n_low = min_k_count(mask.sum(1), k)
    take = torch.arange(values.shape[1])[None, :] < n_low[:, None]
    return (ordered.masked_fill(~take, 0.0)).sum(1) / n_low


def mink_score(t: TokenLogProbs, k: float = 0.4) -> torch.Tensor:
    """Min-K% Prob (Shi et al. 2024; open-unlearning ``mia_min_k``): mean of the lowest max(1, int(k*T))
    target-token log-probs, the appended EOS left out."""
    return _lowest_k_mean(t.lp, t.mask_without_eos(), k)


def minkpp_score(t: TokenLogProbs, k: float = 0.4) -> torch.Tensor:
    """Min-K%++ (Zhang et al. 2024; open-unlearning ``mia_min_k_plus_plus``): Min-K% over
    z_t = (lp_t - mu_t) / sigma_t, the appended EOS left out."""
    z = (t.lp - t.mu) / t.var.clamp(min=1e-12).sqrt()
    return _lowest_k_mean(z, t.mask_without_eos(), k)


def reference_score(t: TokenLogProbs, ref: TokenLogProbs) -> torch.Tensor:
    """Reference-model calibration: mean lp under the target minus mean lp under the reference."""
    if t.ids != ref.ids:
        raise ValueError("target and reference log-probs are over different records")
    return t.mean_lp() - ref.mean_lp()


def gradnorm_score(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record],
                   params: Sequence[torch.nn.Parameter] | None = None) -> torch.Tensor:
    """GradNorm: -||grad_theta l(x)||_2 per example (members sit in flat regions: small gradients); l is the
    mean NLL of the target tokens, the appended EOS left out (as open-unlearning's ``mia_gradnorm``).

    One forward+backward per example (a per-example loop is the definition); gradients are taken with
    `torch.autograd.grad` so no `.grad` buffers of the model are touched.
    """
    device = next(model.parameters()).device
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    max_len = max_length_of(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for record, batch in zip(records, batches(records, tokenizer, 1, max_length=max_len), strict=True):
            batch = batch.to(device)
            labelled = (batch.labels[0] != -100).nonzero().flatten()
            if record.is_qa and tokenizer.eos_token_id is not None and len(labelled) > 1:
                batch.labels[0, labelled[-1]] = -100
            grads = torch.autograd.grad(token_nll(model, batch), params, allow_unused=True)
            sq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
            out.append(-math.sqrt(sq))
    finally:
        model.train(was_training)
    return torch.tensor(out, dtype=torch.float64)
