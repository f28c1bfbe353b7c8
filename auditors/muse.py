"""MUSE's memorisation metrics (Shi et al. 2024; open-unlearning's MUSE configs): VerbMem, the ROUGE-L F1
of the greedy continuation of a forget-text prompt against its true continuation, and KnowMem, the ROUGE-L
recall of the greedy answer to a forget-knowledge question. PrivLeak is `unlearn.auditors.metrics.privleak`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearn.auditors.tofu import rouge_l
from unlearn.data import Record
from unlearn.errors import UnlearnError
from unlearn.generation import greedy_answers, greedy_complete
from unlearn.jsonio import show


def split_continuation(record: Record, tokenizer: Any, prompt_tokens: int) -> tuple[str, str]:
    """(prompt, true continuation): a record's own prompt (MUSE's ``{prompt, gt}`` files), or a plain text cut
    after its first ``prompt_tokens`` tokens."""
    if record.prompt and not record.is_qa:
        return record.prompt, record.response
    ids = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    if len(ids) <= prompt_tokens:
        raise UnlearnError(f"record '{show(record.id)}' has {len(ids)} tokens: too short for a {prompt_tokens}-token "
                           "prompt and a continuation")
    return tokenizer.decode(ids[:prompt_tokens]), tokenizer.decode(ids[prompt_tokens:])


def verbmem_rouge(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, prompt_tokens: int = 32,
                  max_new_tokens: int = 128, batch_size: int = 8) -> np.ndarray:
    """MUSE VerbMem per record: ROUGE-L F1 (rouge_score, stemmer) of the greedy continuation (at most
    ``max_new_tokens``) against the true continuation. ``[N]``"""
    pairs = [split_continuation(r, tokenizer, prompt_tokens) for r in records if not r.is_qa]
    if not pairs:
        raise UnlearnError("VerbMem needs text records (plain texts, or MUSE's prompt/gt pairs)")
    outs = greedy_complete(model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    return np.array([rouge_l(o, gt).fmeasure for o, (_, gt) in zip(outs, pairs, strict=True)])


def knowmem_rouge(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, max_new_tokens: int = 32,
                  batch_size: int = 32) -> np.ndarray:
    """MUSE KnowMem per record: ROUGE-L recall of the greedy answer against the answer (QA records). ``[N]``"""
    qa = [r for r in records if r.is_qa]
    if not qa:
        raise UnlearnError("KnowMem needs QA records")
    answers = greedy_answers(model, tokenizer, qa, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return np.array([rouge_l(a, r.answer or "").recall for a, r in zip(answers, qa, strict=True)])
