"""The plain training loop (benchmark models, retrain references, relearning attacks)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearn.data import Batch, Record, collate, encode_many, pad_id_of
from unlearn.errors import ConfigError, UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.logprobs import forward_logits


@dataclass(frozen=True)
class TrainArgs:
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")

    def to_dict(self) -> JsonObject:
        return asdict(self)


def autocast(enabled: bool, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager[Any]:
    device_type = torch.device(device).type
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def token_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean NLL over labelled tokens of the batch (scalar), computed in fp32."""
    logits = forward_logits(model, batch)
    logits, labels = logits[:, :-1].float(), batch.labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100)


def lr_lambda(total_steps: int, warmup_frac: float, min_lr_frac: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_frac))

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return fn


def train_lm(model: torch.nn.Module, records: Sequence[Record], tokenizer: Any, args: TrainArgs, *,
             on_step: Callable[[int, int, float], None] | None = None,
             regulariser: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """Train ``model`` in place with AdamW + warmup/cosine on the records' target tokens.

    ``regulariser(model, loss)`` is added to the loss (e.g. IAU's gradient restriction).
    Returns the per-step losses. ``on_step(step, total, loss)`` is called after every step.
    """
    if not records:
        raise UnlearnError("cannot train on an empty set of records")
    device = next(model.parameters()).device
    encoded = encode_many(records, tokenizer)
    pad = pad_id_of(tokenizer)
    steps_per_epoch = math.ceil(len(encoded) / args.batch_size)
    total = max(1, int(round(args.epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, args.warmup_frac, args.min_lr_frac))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(total):
        if len(order) < args.batch_size:
            order += torch.randperm(len(encoded), generator=gen).tolist()
        idx, order = order[: args.batch_size], order[args.batch_size:]
        batch = collate([encoded[i] for i in idx], pad).to(device)
        with autocast(args.bf16, device):
            loss = token_nll(model, batch)
        if not torch.isfinite(loss):
            raise UnlearnError(f"training loss became {loss.item()} at step {step}; lower the learning rate")
        total_loss = loss + regulariser(model, loss) if regulariser is not None else loss
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, total, losses[-1])
    model.eval()
    return losses
