"""Robustness figures for an audit: extraction rates and relearning recovery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearn.attacks.adversarial import relearn
from unlearn.attacks.runner import score_records
from unlearn.auditors.metrics import auc
from unlearn.auditors.tofu import extraction_strength, token_accuracy
from unlearn.data import Record
from unlearn.jsonio import JsonObject
from unlearn.logprobs import TokenLogProbs, token_logprobs
from unlearn.splits import group_keys


def extraction(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record]) -> dict[str, float]:
    """Greedy completion of each record's prompt (QA: the question; text: from the start): the rate of
    exact reproductions (every target token is the argmax, i.e. greedy decoding returns the reference)
    and the mean extraction strength (1 - shortest prefix after which the rest is reproduced / length)."""
    return extraction_stats(token_logprobs(model, tokenizer, records, moments=False))


def extraction_stats(t: TokenLogProbs) -> dict[str, float]:
    """`extraction` from log-probs computed with ``hits`` (e.g. by the scoring pass)."""
    hit = token_accuracy(t)
    return {"exact_match": float((hit >= 1.0 - 1e-12).mean()), "extraction_strength":
            float(extraction_strength(t).mean()), "token_accuracy": float(hit.mean())}


def split_for_relearning(members: Sequence[Record], seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Half the groups (people) to relearn on, the other half to measure recovery on; records without
    groups are split in half."""
    import random

    key = group_keys(members)
    groups = sorted(set(key))
    random.Random(seed).shuffle(groups)
    learn = set(groups[: len(groups) // 2])
    return ([r for r, g in zip(members, key, strict=True) if g in learn],
            [r for r, g in zip(members, key, strict=True) if g not in learn])


def relearn_report(model: torch.nn.Module, tokenizer: Any, members: Sequence[Record], nonmembers: Sequence[Record],
                   relearn_set: Sequence[Record] | None = None, *, steps: int = 20, lr: float = 3e-4,
                   seed: int = 0, original_exact_match: float | None = None) -> JsonObject:
    """Fine-tune on ``relearn_set`` (default: half the members' groups) and measure on the other members:
    exact-match extraction and LOSS AUC against non-members, before and after.

    With ``original_exact_match`` (the model before unlearning, on the same records) the report adds the
    recovered fraction (after - before) / (original - before); a model that lost nothing (before =
    original) has recovered everything by definition (1.0)."""
    if relearn_set is None:
        relearn_set, evaluated = split_for_relearning(members, seed)
    else:
        evaluated = list(members)

    def measure(m: torch.nn.Module) -> dict[str, float]:
        s = score_records(m, tokenizer, [*evaluated, *nonmembers], ["loss"]).scores["loss"]
        return {**extraction(m, tokenizer, evaluated), "loss_auc": auc(s[: len(evaluated)], s[len(evaluated):]),
                "mean_prob": float(np.exp(s[: len(evaluated)]).mean())}

    before = measure(model)
    after = measure(relearn(model, tokenizer, relearn_set, steps=steps, lr=lr, seed=seed))
    fraction = None
    if original_exact_match is not None:
        gap = original_exact_match - before["exact_match"]
        fraction = 1.0 if gap <= 0 else (after["exact_match"] - before["exact_match"]) / gap
    return {"relearn_records": len(relearn_set), "evaluated_records": len(evaluated), "steps": steps, "lr": lr,
            "before": before, "after": after, "recovered_fraction": fraction,
            "recovered_exact_match": after["exact_match"] - before["exact_match"],
            "recovered_auc": after["loss_auc"] - before["loss_auc"]}
