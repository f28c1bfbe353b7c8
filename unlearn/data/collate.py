"""Tokenisation and collation: records to token ids with answer-only labels, padded batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import unlearn.numerics  # noqa: F401  (before any tensor math of the process: see there)
from unlearn.data.prompts import format_of, render, special_prefix
from unlearn.data.records import Record
from unlearn.errors import InputError
from unlearn.jsonio import show


@dataclass
class Batch:
    """Token ids ``[B, T]``, attention mask ``[B, T]`` and labels ``[B, T]`` (-100 = no loss)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, rows: slice) -> Batch:
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])


def encode_many(records: Sequence[Record], tokenizer: Any,
                max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per record: the tokenizer's own prefix (BOS when it adds one) + prompt (masked) +
    response + EOS (labelled, QA only).

    Prompt and response are tokenised separately so the loss boundary is exact; one batched
    tokenizer call each.
    """
    if not records:
        return []
    fmt = format_of(tokenizer)
    rendered = [render(r, tokenizer, fmt) for r in records]
    prompts = tokenizer([p for p, _, _ in rendered], add_special_tokens=False)["input_ids"]
    responses = tokenizer([a for _, a, _ in rendered], add_special_tokens=False)["input_ids"]
    prefix = special_prefix(tokenizer)
    out = []
    for record, (prompt, _, chat), prompt_ids, response_ids in zip(records, rendered, prompts, responses):
        if not prompt:
            prompt_ids = []
        if not response_ids:
            raise InputError(f"record '{show(record.id)}' has no tokens to score")
        bos = [] if chat else prefix  # a chat template writes its own BOS
        eos = [tokenizer.eos_token_id] if appends_eos(record, tokenizer, chat) else []
        ids = bos + prompt_ids + response_ids + eos
        if max_length is not None and len(ids) > max_length:
            raise InputError(f"record '{show(record.id)}' is {len(ids)} tokens, longer than the model's context "
                             f"({max_length}); shorten it or raise --max-length")
        out.append((ids, [-100] * (len(bos) + len(prompt_ids)) + response_ids + eos))
    return out


def appends_eos(record: Record, tokenizer: Any, chat: bool) -> bool:
    """QA answers end with the tokenizer's EOS, except under a chat template (its end-of-turn tokens)."""
    return record.is_qa and not chat and tokenizer.eos_token_id is not None


def encode(record: Record, tokenizer: Any, max_length: int | None = None) -> tuple[list[int], list[int]]:
    return encode_many([record], tokenizer, max_length)[0]


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad a list of ``(ids, labels)`` to one batch; padding is masked out and never labelled."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        input_ids[row, sl] = torch.tensor(ids)
        labels[row, sl] = torch.tensor(labs)
        mask[row, sl] = 1
    return Batch(input_ids, mask, labels)


def pad_id_of(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def batches(records: Sequence[Record], tokenizer: Any, batch_size: int, *, max_length: int | None = None,
            padding_side: str = "right") -> Iterator[Batch]:
    """Stream records as padded batches, in order."""
    pad = pad_id_of(tokenizer)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        yield collate(encode_many(chunk, tokenizer, max_length), pad, padding_side)
