"""Batched greedy decoding of answers (ROUGE, extraction attacks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearn.data import Record, collate, pad_id_of, special_prefix


@torch.no_grad()
def greedy_complete(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 48,
                    batch_size: int = 32) -> list[str]:
    """Greedy continuation of each prompt (the tokenizer's own prefix + prompt, left-padded), cut at EOS."""
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    bos = special_prefix(tokenizer)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = [(bos + tokenizer.encode(p, add_special_tokens=False), []) for p in chunk]
            b = collate([(ids, [-100] * len(ids)) for ids, _ in enc], pad, padding_side="left").to(device)
            gen = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, b.input_ids.shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def greedy_answers(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], **kwargs: Any) -> list[str]:
    return [s.strip() for s in greedy_complete(model, tokenizer, [r.prompt for r in records], **kwargs)]
