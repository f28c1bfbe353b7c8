"""The one forward pass: per-token target log-probs and next-token distribution moments.

Every membership score, TOFU metric and likelihood-based loss in the toolkit is a cheap function of a
`TokenLogProbs`; nothing runs the model twice for two scores of the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.data import Batch, Record, batches


@dataclass
class TokenLogProbs:
    """Padded per-sequence statistics over the labelled (target) tokens, all ``[N, T]`` float64.

    ``lp``: log p(target token); ``mu``/``var``: mean and variance of log p_v under the model's own
    next-token distribution at that position (Min-K%++); ``hit``: 1.0 where the argmax is the target
    (exact memorisation, extraction strength); ``mask``: True on real target tokens.
    """

    ids: list[str]
    lp: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor
    hit: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def mean_lp(self) -> torch.Tensor:
        """``[N]`` mean target log-prob (= minus the mean token NLL)."""
        return (self.lp * self.mask).sum(1) / self.lengths.clamp(min=1)

    def sum_lp(self) -> torch.Tensor:
        return (self.lp * self.mask).sum(1)

    def select(self, idx: Sequence[int]) -> TokenLogProbs:
        index = torch.as_tensor(list(idx), dtype=torch.long)
        return TokenLogProbs([self.ids[i] for i in idx], self.lp[index], self.mu[index], self.var[index],
                             self.hit[index], self.mask[index])


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits ``[B, T, V]`` with position ids counted over real tokens, so that left padding gives the
    same logits as no padding."""
    position_ids = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids).logits


def _pad_cat(chunks: list[torch.Tensor], fill: float | bool) -> torch.Tensor:
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=fill) for c in chunks])


def batch_stats(logits: torch.Tensor, batch: Batch, moments: bool = True) -> tuple[torch.Tensor, ...]:
    """From logits ``[B, T, V]`` of one batch: ``lp, mu, var, hit, mask`` each ``[B, T-1]``.

    Position t scores token t+1. Computed one sequence at a time in fp32 so that a 128k vocabulary
    never needs a ``[B, T, V]`` fp32 copy.
    """
    labels = batch.labels[:, 1:]
    mask = labels != -100
    safe = labels.clamp(min=0)
    B, T = labels.shape
    lp = torch.zeros(B, T, dtype=torch.float64)
    mu, var, hit = torch.zeros_like(lp), torch.zeros_like(lp), torch.zeros_like(lp)
    for b in range(B):
        logp = torch.log_softmax(logits[b, :-1].float(), dim=-1)  # [T, V]
        lp[b] = logp.gather(-1, safe[b, :, None])[:, 0].double().cpu()
        hit[b] = (logp.argmax(-1) == safe[b]).double().cpu()
        if moments:
            p = logp.exp()
            m1 = (p * logp).sum(-1)
            mu[b] = m1.double().cpu()
            var[b] = (p * (logp - m1[:, None]).square()).sum(-1).double().cpu()  # two-pass: stable in fp32
    return lp, mu, var, hit, mask.cpu()


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, batch_size: int = 32,
                   padding_side: str = "right", moments: bool = True,
                   on_batch: Callable[[int], None] | None = None) -> TokenLogProbs:
    """One batched forward pass per batch of records; see `TokenLogProbs`."""
    device = next(model.parameters()).device
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        for batch in batches(records, tokenizer, batch_size, max_length=max_len, padding_side=padding_side):
            batch = batch.to(device)
            logits = forward_logits(model, batch)
            parts.append(batch_stats(logits, batch, moments))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    parts = [_compact(p) for p in parts]
    lp, mu, var, hit, mask = (_pad_cat([p[i] for p in parts], False if i == 4 else 0.0) for i in range(5))
    return TokenLogProbs([r.id for r in records], lp, mu, var, hit, mask)


def _compact(stats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Move each row's target tokens to the front, so column j is the j-th target token whatever the
    padding side or prompt length."""
    *values, mask = stats
    counts = mask.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    new_mask = torch.arange(width)[None, :] < counts[:, None]
    out = []
    for t in values:
        c = torch.zeros(t.shape[0], width, dtype=t.dtype)
        c[new_mask] = t[mask]
        out.append(c)
    return (*out, new_mask)
