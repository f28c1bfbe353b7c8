"""Adversarial audits of an unlearned model: worst-case forget sets, relearning, extraction.

Worst-case forget set (Challenging Forgets, first-order bi-level; DESIGN.md section 5): weights w in
[0, 1]^N over a candidate pool with sum w = k. Each round resets theta to the original, runs the
unlearner for a few steps on the current top-k records by weight (our first-order stand-in for
unlearning the w-weighted set: the real method, not a surrogate loss, sees the set), and moves
w <- Pi(w - eta (s + 2 gamma w)), s_i the standardised loss of record i after the last run that
unlearned it: records whose loss stays LOWEST after being unlearned (the hardest to forget) gain
weight. A record's loss is only informative after a run that had it in the forget set (records left
out keep a low loss trivially, and using theirs makes the search oscillate), so a first sweep unlearns
the pool in chunks of k to give every record one such measurement. Pi finds mu by bisection so that
sum clip(w - mu, 0, 1) = k. The answer is the evaluated set whose mean loss after unlearning was lowest.

Relearning: fine-tune the unlearned model for a few steps on related data and see how much of the
forget set comes back. Extraction: greedy completion of the forget prompts (exact-match and extraction
strength, from ``auditors.tofu.evaluate_qa``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unlearn.attacks.runner import score_records
from unlearn.data import Record
from unlearn.errors import UnlearnError


def project_capped_simplex(v: np.ndarray, k: float, iters: int = 100) -> np.ndarray:
    """argmin ||w - v|| over {w in [0, 1]^N, sum w = k}: w = clip(v - mu, 0, 1), mu by bisection."""
    if not 0 < k <= len(v):
        raise UnlearnError(f"k must be in (0, {len(v)}], got {k}")
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(iters):
        mu = (lo + hi) / 2
        if np.clip(v - mu, 0, 1).sum() > k:
            lo = mu
        else:
            hi = mu
    return np.clip(v - (lo + hi) / 2, 0, 1)


def top_k(w: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest weights (ties broken by index), exactly k of them."""
    return sorted(np.argsort(-w, kind="mergesort")[:k].tolist())


@dataclass
class WorstCase:
    indices: list[int]
    weights: np.ndarray
    history: list[dict[str, float]]


def worst_case_set(model: torch.nn.Module, tokenizer: Any, pool: Sequence[Record], k: int,
                   unlearn: Callable[[torch.nn.Module, list[Record]], None], *, rounds: int = 4, eta: float = 0.5,
                   gamma: float = 0.1, seed: int = 0,
                   on_round: Callable[[int, int], None] | None = None) -> WorstCase:
    """The k pool records that ``unlearn(model, records)`` (which changes ``model`` in place) handles worst.
    ``model`` is restored to its original weights afterwards."""
    from unlearn.params import restore, snapshot

    if not 0 < k < len(pool):
        raise UnlearnError(f"k must be between 1 and the pool size - 1 ({len(pool) - 1}), got {k}")
    theta0 = snapshot(model)
    rng = np.random.default_rng(seed)
    in_set_loss = np.full(len(pool), np.nan)  # each record's loss after a run that unlearned it
    history: list[dict[str, float]] = []
    best: tuple[float, list[int]] = (float("inf"), [])

    def unlearn_and_score(chosen: list[int]) -> None:
        unlearn(model, [pool[i] for i in chosen])
        loss = -score_records(model, tokenizer, [pool[i] for i in chosen], ["loss"]).scores["loss"]
        restore(model, theta0)
        in_set_loss[chosen] = loss
        nonlocal best
        if float(loss.mean()) < best[0]:
            best = (float(loss.mean()), chosen)
        history.append({"round": len(history) + 1, "set_loss": float(loss.mean())})
        if on_round is not None:
            on_round(len(history), sweep + rounds)

    order = rng.permutation(len(pool)).tolist()
    chunks = [order[i:i + k] for i in range(0, len(pool), k)]
    sweep = len(chunks)
    try:
        for chunk in chunks:  # every record is unlearned once, in a set of size k (the last one topped up)
            unlearn_and_score(sorted(chunk + order[: k - len(chunk)] if len(chunk) < k else chunk))
        w = np.full(len(pool), k / len(pool))
        for _ in range(rounds):
            s = (in_set_loss - in_set_loss.mean()) / (in_set_loss.std() + 1e-12)
            w = project_capped_simplex(w - eta * (s + 2 * gamma * w), k)
            unlearn_and_score(top_k(w, k))
    finally:
        restore(model, theta0)
    return WorstCase(best[1], w, history)


def random_sets(n: int, k: int, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [sorted(rng.sample(range(n), k)) for _ in range(count)]


def relearn(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, steps: int = 20, lr: float = 1e-3,
            batch_size: int = 8, seed: int = 0) -> torch.nn.Module:
    """A fine-tuned copy of ``model``: ``steps`` AdamW steps on ``records`` (the relearning attack)."""
    import copy

    from unlearn.training import TrainArgs, train_lm

    if not records:
        raise UnlearnError("the relearning set is empty")
    from unlearn.lora import is_peft, merged

    attacked = merged(model) if is_peft(model) else copy.deepcopy(model)  # every weight, not just an adapter's
    for p in attacked.parameters():
        p.requires_grad_(True)
    epochs = steps * batch_size / len(records)
    train_lm(attacked, records, tokenizer, TrainArgs(epochs=epochs, batch_size=batch_size, lr=lr, warmup_frac=0.0,
                                                      min_lr_frac=1.0, seed=seed, bf16=False))
    return attacked.eval()
