"""The one forward pass: per-token target log-probs and next-token distribution moments.

Every membership score, TOFU metric and likelihood-based loss in the toolkit is a cheap function of a
`TokenLogProbs`; nothing runs the model twice for two scores of the same text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.data import Batch, Record, appends_eos, collate, encode_many, format_of, pad_id_of, render


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
    eos_last: torch.Tensor | None = None  # [N] bool: the last target token is the appended EOS (QA records)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def mask_without_eos(self) -> torch.Tensor:
        """``mask`` without each row's appended EOS target (as open-unlearning's Min-K, Min-K++ and gradnorm,
        which drop the last labelled token); rows whose only target is the EOS keep it."""
        if self.eos_last is None:
            return self.mask
        last = self.lengths - 1
        drop = torch.zeros_like(self.mask)
        rows = torch.nonzero(self.eos_last & (self.lengths > 1)).flatten()
        drop[rows, last[rows]] = True
        return self.mask & ~drop

    def take(self, rows: slice) -> TokenLogProbs:
        """The statistics of a contiguous run of records."""
        eos = None if self.eos_last is None else self.eos_last[rows]
        return TokenLogProbs(self.ids[rows], self.lp[rows], self.mu[rows], self.var[rows], self.hit[rows],
                             self.mask[rows], eos)

    def mean_lp(self) -> torch.Tensor:
        """``[N]`` mean target log-prob (= minus the mean token NLL)."""
        return (self.lp * self.mask).sum(1) / self.lengths.clamp(min=1)

    def sum_lp(self) -> torch.Tensor:
        return (self.lp * self.mask).sum(1)


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits ``[B, T, V]`` with position ids counted over real tokens, so that left padding gives the
    same logits as no padding."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids_of(batch),
                 use_cache=False).logits


def position_ids_of(batch: Batch) -> torch.Tensor:
    """Positions counted over real tokens (0 at each row's first token, whichever side is padded)."""
    return (batch.attention_mask.cumsum(1) - 1).clamp(min=0)


def _pad_cat(chunks: list[torch.Tensor], fill: float | bool) -> torch.Tensor:
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=fill) for c in chunks])


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(the decoder without its output layer, hidden -> logits) when the model splits that way (Hugging Face
    causal LMs: ``base_model`` + ``get_output_embeddings``; Gemma-2's final soft-capping applied), else None."""
    if hasattr(model, "get_base_model"):  # a PEFT model: its LoRA layers live inside the base model
        model = model.get_base_model()
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if base is None or base is model or not isinstance(head, torch.nn.Module):
        return None
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    scale = getattr(getattr(model, "config", None), "logit_scale", None)
    if scale not in (None, 1, 1.0):
        return None  # an unusual output transform: take the model's own logits

    def logits_of(hidden: torch.Tensor) -> torch.Tensor:
        x = head(hidden)
        return cap * torch.tanh(x / cap) if cap else x

    return base, logits_of


def _logits_at(hidden: torch.Tensor, logits_of: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
               cols: torch.Tensor) -> torch.Tensor:
    return logits_of(hidden[rows, cols])


def batch_stats(logits: torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: Batch,
                moments: bool = True, hits: bool = True, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    """From the logits of one batch: ``lp, mu, var, hit, mask``, each ``[B, W]`` with the target tokens of
    every row moved to the front (column j = j-th target token; W = most targets).

    ``logits`` is ``[B, T, V]``, or a function (rows, columns) -> ``[c, V]`` that computes them at those
    positions only (the output layer applied to hidden states ``chunk`` positions at a time, so neither a
    ``[B, T, V]`` tensor nor its fp32 copy ever exists).
    """
    at = logits if callable(logits) else (lambda r, c: logits[r, c])
    labels = batch.labels[:, 1:]
    mask = labels != -100
    rows, cols = mask.nonzero(as_tuple=True)
    targets = labels[rows, cols]
    n = targets.numel()
    lp, mu, var, hit = (torch.zeros(n, dtype=torch.float32, device=labels.device) for _ in range(4))
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        x = at(rows[sl], cols[sl]).float()  # [c, V]
        lse = torch.logsumexp(x, dim=-1)
        lp[sl] = x.gather(-1, targets[sl, None])[:, 0] - lse
        if hits:
            hit[sl] = (x.argmax(-1) == targets[sl]).float()
        if moments:
            logp = x - lse[:, None]
            p = logp.exp()
            m1 = (p * logp).sum(-1)
            mu[sl] = m1
            var[sl] = (p * (logp - m1[:, None]).square()).sum(-1)  # two-pass: stable in fp32
    counts = mask.sum(1).cpu()
    width = int(counts.max()) if counts.numel() else 0
    front = torch.arange(width)[None, :] < counts[:, None]
    out = []
    for flat in (lp, mu, var, hit):
        padded = torch.zeros(mask.shape[0], width, dtype=torch.float64)
        padded[front] = flat.double().cpu()  # nonzero() is row-major, as is boolean assignment
        out.append(padded)
    return (*out, front)


@dataclass
class Prepared:
    """Records tokenised, ordered by length and collated once, to be scored again and again (every check of
    the stopping rule, every attack of the battery)."""

    ids: list[str]
    order: list[int]  # batch position -> record index
    batches: list[Batch]
    eos_last: torch.Tensor
    encoded: list[tuple[list[int], list[int]]]  # per record (its own order), for `subset`
    pad: int
    batch_size: int
    padding_side: str

    def subset(self, positions: Sequence[int]) -> Prepared:
        """The batches of the records at ``positions`` (in that order), from the tokens already made: what
        `prepare` of those records returns, without tokenising them again."""
        pos = [int(i) for i in positions]
        return _batched([self.ids[i] for i in pos], [self.encoded[i] for i in pos], self.eos_last[pos],
                        self.pad, self.batch_size, self.padding_side)


def merged(parts: Sequence[Prepared], positions: Sequence[Sequence[int]]) -> Prepared:
    """One preparation of every record of ``parts``, part k's i-th record at position ``positions[k][i]``:
    what `prepare` of them in that order returns, from the tokens already made."""
    n = sum(len(p) for p in positions)
    ids, encoded, eos = [""] * n, [([], [])] * n, torch.zeros(n, dtype=torch.bool)
    for part, pos in zip(parts, positions, strict=True):
        for i, j in enumerate(pos):
            ids[j], encoded[j], eos[j] = part.ids[i], part.encoded[i], part.eos_last[i]
    first = parts[0]
    return _batched(ids, encoded, eos, first.pad, first.batch_size, first.padding_side)


def _batched(ids: list[str], encoded: list[tuple[list[int], list[int]]], eos_last: torch.Tensor, pad: int,
             batch_size: int, padding_side: str) -> Prepared:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    batches = [collate([encoded[i] for i in order[s:s + batch_size]], pad, padding_side)
               for s in range(0, len(order), batch_size)]
    return Prepared(ids, order, batches, eos_last, encoded, pad, batch_size, padding_side)


def prepare(records: Sequence[Record], tokenizer: Any, *, max_length: int | None = None, batch_size: int = 32,
            padding_side: str = "right") -> Prepared:
    """The batches `token_logprobs` runs: records batched by token length (less padding)."""
    fmt = format_of(tokenizer)
    eos_last = torch.tensor([appends_eos(r, tokenizer, render(r, tokenizer, fmt)[2]) for r in records])
    return _batched([r.id for r in records], encode_many(records, tokenizer, max_length), eos_last,
                    pad_id_of(tokenizer), batch_size, padding_side)


def max_length_of(model: torch.nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, batch_size: int = 32,
                   padding_side: str = "right", moments: bool = True, hits: bool = True,
                   on_batch: Callable[[int], None] | None = None, prepared: Prepared | None = None) -> TokenLogProbs:
    """One batched forward pass per batch of records; see `TokenLogProbs`. Records are batched by token
    length (less padding) and returned in their own order; logits exist only at target positions, a chunk
    at a time (``output_head``). ``prepared``: these records' `prepare` (the batching arguments then are
    its own)."""
    device = next(model.parameters()).device
    if prepared is None:
        prepared = prepare(records, tokenizer, max_length=max_length_of(model), batch_size=batch_size,
                           padding_side=padding_side)
    elif prepared.ids != [r.id for r in records]:
        raise ValueError("the prepared batches are of other records")
    was_training = model.training
    model.eval()
    split = output_head(model)
    base, logits_of = split if split is not None else (None, None)
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        for cpu_batch in prepared.batches:
            batch = cpu_batch.to(device)
            if base is None or logits_of is None:
                at: Any = forward_logits(model, batch)
            else:
                hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids_of(batch),
                              use_cache=False).last_hidden_state
                at = functools.partial(_logits_at, hidden, logits_of)
            parts.append(batch_stats(at, batch, moments, hits))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    back = torch.argsort(torch.tensor(prepared.order))
    lp, mu, var, hit, mask = (_pad_cat([p[i] for p in parts], False if i == 4 else 0.0)[back] for i in range(5))
    return TokenLogProbs(list(prepared.ids), lp, mu, var, hit, mask, prepared.eos_last.clone())
