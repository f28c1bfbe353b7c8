"""Batched greedy decoding of answers (ROUGE, extraction attacks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearn.data import Record, collate, format_of, pad_id_of, render, special_prefix


@torch.no_grad()
def greedy_complete(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 48,
                    batch_size: int = 32, prefix: bool = True) -> list[str]:
    """Greedy continuation of each prompt (the tokenizer's own prefix, unless ``prefix`` is False, + prompt,
    left-padded), cut at EOS."""
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    bos = special_prefix(tokenizer) if prefix else []
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
    """Greedy answers to QA records, prompted as the tokenizer's format renders them."""
    fmt = format_of(tokenizer)
    rendered = [render(r, tokenizer, fmt) for r in records]
    chat = [c for _, _, c in rendered]
    out: list[str] = [""] * len(records)
    for flag in (False, True):  # a chat template writes its own BOS
        rows = [i for i, c in enumerate(chat) if c == flag]
        if rows:
            texts = greedy_complete(model, tokenizer, [rendered[i][0] for i in rows], prefix=not flag, **kwargs)
            for i, t in zip(rows, texts, strict=True):
                out[i] = t.strip()
    return out
