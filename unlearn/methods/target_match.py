"""Target matching: pull the forget answers' next-token distributions to what the model predicts for someone it
never saw, instead of pushing their likelihood down.

Anchored counterfactuals (the "generic translation" of Eldan & Russinovich 2023, Who's Harry Potter): each forget
record names what is to be forgotten in one of its fields (the built-in benchmark's ``name``: the person). The
record is rewritten with that term replaced by a stand-in the model never saw (the term's letters shuffled,
word by word, keyed by the seed), and the original model's prediction on the rewritten text, token by token, is
the target: on an unseen person the model predicts the format and its prior over values, which is what a model
never trained on the person predicts. Tokens of the replaced term itself keep the original model's prediction.

    L = KL(q || p_theta) on the forget answers' tokens + alpha * retain term (KL to the original model by default),

with ``q`` the original model's next-token distribution on the counterfactual, aligned token by token on the
blocks the two token sequences share. The loss is zero at the target, so it cannot overshoot the way ascent
does: every score moves toward the level of unseen records together.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.data import Batch, Record, encode_many, pad_id_of
from unlearn.errors import InputError
from unlearn.jsonio import show
from unlearn.logprobs import forward_logits, max_length_of
from unlearn.loop import StepLoss, frozen_copy, run_loop
from unlearn.losses import sequence_logprobs, target_kl
from unlearn.methods.gradient import RetainArgs, add_retain, retain_term
from unlearn.unlearner import Monitor, UnlearnResult, register


@dataclass
class MatchArgs(RetainArgs):
    lr: float = arg(1e-3, "learning rate", gt=0)
    retain_loss: str = arg("kl", "nll (retain NLL) or kl (KL to the original model)", choices=("nll", "kl"))
    anchor_field: str = arg("name", "record field holding the term to forget (a person's name); it must occur in "
                            "the record's text")
    forget_weight: float = arg(1.0, "weight of the matching term", ge=0)


def _occurrences(ids: Sequence[int], pieces: Sequence[int]) -> list[int]:
    n = len(pieces)
    return [i for i in range(len(ids) - n + 1) if n and list(ids[i:i + n]) == list(pieces)]


def stand_in(pieces: list[int], tokenizer: Any, rng: random.Random) -> list[int]:
    """As many tokens as ``pieces``, name-like and unseen: the term's own word-start pieces permuted among
    themselves and its continuation pieces among theirs (so "Tewyn Marven" may become "Marwyn Teven"); where no
    permutation changes it, random vocabulary tokens of the same kinds."""
    text = [tokenizer.decode([p]) for p in pieces]
    starts = [i for i, t in enumerate(text) if i == 0 or t[:1].isspace()]
    rest = [i for i in range(len(pieces)) if i not in starts]
    for _ in range(10):
        out = list(pieces)
        for slots in (starts, rest):
            order = rng.sample(slots, len(slots))
            for i, j in zip(slots, order):
                out[i] = pieces[j]
        if out != list(pieces):
            return out
    kinds = _token_kinds(tokenizer)
    return [rng.choice(kinds[t[:1].isspace(), t.strip()[:1].isupper()] or [p]) for p, t in zip(pieces, text)]


def _token_kinds(tokenizer: Any) -> dict[tuple[bool, bool], list[int]]:
    """Alphabetic vocabulary tokens by (starts with a space, capitalised)."""
    kinds: dict[tuple[bool, bool], list[int]] = {(a, b): [] for a in (False, True) for b in (False, True)}
    for i in range(len(tokenizer)):
        t = tokenizer.decode([i])
        if t.strip().isalpha():
            kinds[t[:1].isspace(), t.strip()[:1].isupper()].append(i)
    return kinds


def counterfactual_ids(record: Record, ids: list[int], tokenizer: Any, field: str, seed: int) -> list[int]:
    """``ids`` (the encoded record) with every occurrence of its anchor (``record.meta[field]``) replaced, token for
    token, by a stand-in (the same for every occurrence; keyed by the seed and the term)."""
    term = record.meta.get(field)
    if not isinstance(term, str) or not term.strip():
        raise InputError(f"record '{show(record.id)}': target matching needs the term to forget in field "
                         f"'{field}' (set anchor_field)", field=field)
    rng = random.Random(hashlib.sha256(f"{seed}\0{term}".encode()).digest())
    out, found = list(ids), False
    for variant in (" " + term, term):
        pieces = tokenizer(variant, add_special_tokens=False)["input_ids"]
        hits = _occurrences(out, pieces)
        if hits:
            new = stand_in(pieces, tokenizer, rng)
            for i in hits:
                out[i:i + len(pieces)] = new
            found = True
    if not found:
        raise InputError(f"record '{show(record.id)}': its '{field}' ({show(term)}) does not occur in its tokens",
                         field=field)
    return out


class CounterfactualTargets:
    """The target ``q`` of each forget sequence, computed from a frozen model on the fly (one extra forward of the
    counterfactual batch per step; nothing of vocabulary size is stored)."""

    def __init__(self, records: Sequence[Record], tokenizer: Any, field: str, seed: int,
                 max_length: int | None) -> None:
        encoded = encode_many(records, tokenizer, max_length)
        self.pad = pad_id_of(tokenizer)
        self.pairs = {tuple(ids): counterfactual_ids(r, ids, tokenizer, field, seed)
                      for r, (ids, _) in zip(records, encoded, strict=True)}

    def counterfactual(self, batch: Batch) -> Batch:
        """The batch with every anchor replaced by its stand-in (same shape, same labels)."""
        ids = batch.input_ids.clone()
        for b in range(len(batch)):
            real = batch.attention_mask[b].bool()
            ids[b, real] = torch.tensor(self.pairs[tuple(batch.input_ids[b, real].tolist())], device=ids.device)
        return Batch(ids, batch.attention_mask, batch.labels)

    @torch.no_grad()
    def target_logprobs(self, ref: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``[B, T, V]``: log q of the token after each position, the reference's prediction on the counterfactual;
        where the token is a stand-in's, its probability and the original token's trade places."""
        cf = self.counterfactual(batch)
        q = torch.log_softmax(forward_logits(ref, cf).float(), -1)
        b, t = torch.nonzero(cf.input_ids[:, 1:] != batch.input_ids[:, 1:], as_tuple=True)
        orig, new = batch.input_ids[b, t + 1], cf.input_ids[b, t + 1]
        q_orig, q_new = q[b, t, orig], q[b, t, new]
        q[b, t, orig], q[b, t, new] = q_new, q_orig
        return q


@register("target_match", MatchArgs, "target matching: forget answers pulled to the model's own prediction for a "
          "never-seen stand-in of the anchor (KL), + retain term")
def target_match(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
                 args: MatchArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
                 on_step: Any = None) -> UnlearnResult:
    targets = CounterfactualTargets(forget, tokenizer, args.anchor_field, args.seed, max_length_of(model))
    ref = frozen_copy(model)
    return run_loop(model, tokenizer, forget, retain, args, match_step(args, ref, targets, retain_term(args, ref)),
                    uses_retain=args.retain_weight > 0, monitor=monitor, accelerator=accelerator, on_step=on_step)


def match_step(args: MatchArgs, ref: torch.nn.Module, targets: CounterfactualTargets, term: Any) -> StepLoss:
    def step(m: torch.nn.Module, fb: Batch, rb: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        lp, n, logits = sequence_logprobs(m, fb)
        loss = args.forget_weight * target_kl(logits, targets.target_logprobs(ref, fb), fb.labels)
        stats = {"match_kl": float(loss.detach()), "forget_nll": float(-(lp / n).mean().detach())}
        return add_retain(loss, stats, m, rb, args, term)

    return step
