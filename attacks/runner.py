"""All membership scores of a record set from one forward pass per batch (plus the optional extras)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.scores import gradnorm_score, loss_score, mink_score, minkpp_score, reference_score, zlib_score
from unlearn.data import Record
from unlearn.distributed import rank_world, sharded
from unlearn.errors import UnlearnError
from unlearn.logprobs import TokenLogProbs, token_logprobs

ONE_PASS_SCORES = ("loss", "zlib", "mink", "minkpp")
ALL_SCORES = (*ONE_PASS_SCORES, "reference", "gradnorm")
DEFAULT_SCORES = ONE_PASS_SCORES


@dataclass
class ScoreTable:
    """Scores ``name -> [N]`` for records ``ids`` (higher = more likely a member)."""

    ids: list[str]
    scores: dict[str, np.ndarray]
    lengths: np.ndarray
    logprobs: TokenLogProbs | None = field(default=None, repr=False)


def parse_scores(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in ALL_SCORES]
    if unknown or not names:
        raise UnlearnError(f"unknown score(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(ALL_SCORES)}")
    return list(dict.fromkeys(names))


def score_records(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], scores: Sequence[str], *,
                  k: float = 0.4, reference: torch.nn.Module | None = None, batch_size: int = 32,
                  on_batch: Callable[[int], None] | None = None) -> ScoreTable:
    """Compute the requested scores; the one-pass ones share a single forward pass of ``model``.

    Under several processes each rank scores an interleaved shard and the scores are gathered (the
    table then carries no token log-probs)."""
    if not records:
        raise UnlearnError("cannot score an empty set of records")
    if "reference" in scores and reference is None:
        raise UnlearnError("the 'reference' score needs a reference model (--reference)")
    if rank_world()[1] == 1:
        return _score_local(model, tokenizer, records, scores, k, reference, batch_size, on_batch)

    def local(shard: list[Record]) -> dict[str, np.ndarray]:
        t = _score_local(model, tokenizer, shard, scores, k, reference, batch_size, on_batch)
        return {**t.scores, "_lengths": t.lengths}

    arrays = sharded(records, local)
    lengths = arrays.pop("_lengths")
    return ScoreTable([r.id for r in records], arrays, lengths)


def _score_local(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], scores: Sequence[str], k: float,
                 reference: torch.nn.Module | None, batch_size: int,
                 on_batch: Callable[[int], None] | None) -> ScoreTable:
    tlp = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments="minkpp" in scores,
                         hits=False, on_batch=on_batch)
    out: dict[str, torch.Tensor] = {}
    for name in scores:
        if name == "loss":
            out[name] = loss_score(tlp)
        elif name == "zlib":
            out[name] = zlib_score(tlp, [r.response for r in records])
        elif name == "mink":
            out[name] = mink_score(tlp, k)
        elif name == "minkpp":
            out[name] = minkpp_score(tlp, k)
        elif name == "reference":
            assert reference is not None
            ref = token_logprobs(reference, tokenizer, records, batch_size=batch_size, moments=False, hits=False)
            out[name] = reference_score(tlp, ref)
        elif name == "gradnorm":
            out[name] = gradnorm_score(model, tokenizer, records)
    return ScoreTable([r.id for r in records], {n: v.numpy() for n, v in out.items()},
                      tlp.lengths.numpy(), tlp)
