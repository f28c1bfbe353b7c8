"""All membership scores of a record set from one forward pass per batch (plus the optional extras)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unlearn.attacks.scores import gradnorm_score, loss_score, mink_score, minkpp_score, reference_score, zlib_score
from unlearn.data import Record
from unlearn.distributed import rank_world, sharded
from unlearn.errors import UnlearnError
from unlearn.logprobs import Prepared, TokenLogProbs, token_logprobs
from unlearn.registry import Registry


@dataclass
class ScoreContext:
    """What a score may use: the shared one-pass log-probs, and for the extras the model and records."""

    model: torch.nn.Module
    tokenizer: Any
    records: Sequence[Record]
    tlp: TokenLogProbs
    k: float
    reference: torch.nn.Module | None
    batch_size: int
    padding_side: str = "right"


# ``(ctx) -> [N]`` per score; ``one_pass``: a function of the shared log-probs alone.
SCORES: Registry[Callable[[ScoreContext], torch.Tensor]] = Registry("score")


@SCORES.register("loss", one_pass=True)
def _loss(c: ScoreContext) -> torch.Tensor:
    return loss_score(c.tlp)


@SCORES.register("zlib", one_pass=True)
def _zlib(c: ScoreContext) -> torch.Tensor:
    return zlib_score(c.tlp, [r.response for r in c.records])


@SCORES.register("mink", one_pass=True)
def _mink(c: ScoreContext) -> torch.Tensor:
    return mink_score(c.tlp, c.k)


@SCORES.register("minkpp", one_pass=True, moments=True)
def _minkpp(c: ScoreContext) -> torch.Tensor:
    return minkpp_score(c.tlp, c.k)


@SCORES.register("reference", one_pass=False, needs_reference=True)
def _reference(c: ScoreContext) -> torch.Tensor:
    assert c.reference is not None
    ref = token_logprobs(c.reference, c.tokenizer, c.records, batch_size=c.batch_size, moments=False, hits=False,
                         padding_side=c.padding_side)
    return reference_score(c.tlp, ref)


@SCORES.register("gradnorm", one_pass=False)
def _gradnorm(c: ScoreContext) -> torch.Tensor:
    return gradnorm_score(c.model, c.tokenizer, c.records)


ONE_PASS_SCORES = tuple(SCORES.names(one_pass=True))
ALL_SCORES = tuple(SCORES.names())
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
                  on_batch: Callable[[int], None] | None = None, padding_side: str = "right",
                  hits: bool = False, prepared: Prepared | None = None) -> ScoreTable:
    """Compute the requested scores; the one-pass ones share a single forward pass of ``model``. With ``hits``
    the table's token log-probs also say where the argmax is the target (extraction, from the same pass).
    ``prepared``: the records' batches, tokenised once for repeated scoring (`unlearn.logprobs.prepare`).

    Under several processes each rank scores an interleaved shard and the scores are gathered (the
    table then carries no token log-probs, and ``prepared`` is not used: each rank batches its shard)."""
    if not records:
        raise UnlearnError("cannot score an empty set of records")
    if any(SCORES.entry(n).info.get("needs_reference") for n in scores) and reference is None:
        raise UnlearnError("the 'reference' score needs a reference model (--reference)")
    if rank_world()[1] == 1:
        return _score_local(model, tokenizer, records, scores, k, reference, batch_size, on_batch, padding_side,
                            hits, prepared)

    def local(shard: list[Record]) -> dict[str, np.ndarray]:
        t = _score_local(model, tokenizer, shard, scores, k, reference, batch_size, on_batch, padding_side)
        return {**t.scores, "_lengths": t.lengths}

    arrays = sharded(records, local)
    lengths = arrays.pop("_lengths")
    return ScoreTable([r.id for r in records], arrays, lengths)


def _score_local(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], scores: Sequence[str], k: float,
                 reference: torch.nn.Module | None, batch_size: int,
                 on_batch: Callable[[int], None] | None, padding_side: str = "right",
                 hits: bool = False, prepared: Prepared | None = None) -> ScoreTable:
    moments = any(SCORES.entry(n).info.get("moments") for n in scores)
    tlp = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments=moments, hits=hits,
                         on_batch=on_batch, padding_side=padding_side, prepared=prepared)
    ctx = ScoreContext(model, tokenizer, records, tlp, k, reference, batch_size, padding_side)
    out = {name: SCORES.get(name)(ctx) for name in scores}
    return ScoreTable([r.id for r in records], {n: v.numpy() for n, v in out.items()},
                      tlp.lengths.numpy(), tlp)
