"""The one first-order unlearning loop, run through Accelerate (one process, DDP, DeepSpeed, FSDP).

A method supplies ``step_loss(model, forget_batch, retain_batch) -> (loss, stats)``; the loop owns
sampling, the optimiser, clipping, the stopping-rule monitor, timing and memory.
"""

from __future__ import annotations

import copy
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from unlearn.data import Batch, Record, collate, encode_many, pad_id_of
from unlearn.errors import UnlearnError
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult
from unlearn.params import apply_scope

StepLoss = Callable[[torch.nn.Module, Batch, Batch | None], tuple[torch.Tensor, dict[str, float]]]


def make_accelerator(accelerator: Any = None) -> Any:
    if accelerator is not None:
        return accelerator
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (peak RSS)


def _loader(records: Sequence[Record], tokenizer: Any, global_batch: int, seed: int, accelerator: Any,
            max_length: int | None) -> DataLoader:
    encoded = encode_many(records, tokenizer, max_length)
    per_process = max(1, global_batch // accelerator.num_processes)
    if per_process * accelerator.num_processes != global_batch:
        raise UnlearnError(f"batch size {global_batch} is not divisible by {accelerator.num_processes} processes")
    gen = torch.Generator().manual_seed(seed)
    pad = pad_id_of(tokenizer)
    loader = DataLoader(encoded, batch_size=global_batch, shuffle=True, generator=gen, drop_last=False,
                        collate_fn=lambda items: collate(items, pad))
    return loader


def _cycle(loader: DataLoader, accelerator: Any) -> Iterator[Batch]:
    """Endless batches; each process takes its slice of every global batch (same order for any world size)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    while True:
        for batch in loader:
            if world > 1:
                n = len(batch)
                lo, hi = rank * n // world, (rank + 1) * n // world
                batch = Batch(batch.input_ids[lo:hi], batch.attention_mask[lo:hi], batch.labels[lo:hi])
            yield batch.to(accelerator.device)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def run_loop(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
             args: UnlearnArgs, step_loss: StepLoss, *, uses_retain: bool, monitor: Monitor | None = None,
             accelerator: Any = None, on_step: Callable[[int, int, dict[str, Any]], None] | None = None) -> UnlearnResult:
    """Run ``args.max_steps`` steps of ``step_loss`` (or fewer if the monitor stops it); model changed in place."""
    if not forget:
        raise UnlearnError("the forget set is empty: nothing to unlearn")
    if uses_retain and not retain:
        raise UnlearnError("this method needs a retain set, and it is empty")
    acc = make_accelerator(accelerator)
    torch.manual_seed(args.seed)
    params = apply_scope(model, args.scope)
    max_len = getattr(model.config, "max_position_embeddings", None)
    forget_it = _cycle(_loader(forget, tokenizer, args.batch_size, args.seed, acc, max_len), acc)
    retain_it = _cycle(_loader(retain, tokenizer, args.retain_batch_size, args.seed + 1, acc, max_len),
                       acc) if uses_retain else None
    if args.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=args.lr, weight_decay=args.weight_decay)
    model.to(acc.device)
    prepared, opt = acc.prepare(model, opt)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    reason, message = "max_steps", f"reached max_steps={args.max_steps}"

    def check(step: int) -> bool:
        nonlocal reason, message
        if monitor is None:
            return False
        prepared.eval()
        verdict, msg, metrics = monitor(acc.unwrap_model(prepared), step)
        prepared.train()
        history.append({"step": step, **metrics})
        if verdict is not None:
            reason, message = verdict, msg
            return True
        return False

    steps = 0
    stopped = check(0) if monitor is not None else False
    if stopped and reason == "utility_drop":
        raise UnlearnError(f"the retain-utility check failed before any step: {message}")
    if stopped:
        reason, message = "already_undetectable", f"nothing to do: {message}"
    prepared.train()
    while not stopped and steps < args.max_steps:
        fb = next(forget_it)
        rb = next(retain_it) if retain_it is not None else None
        loss, stats = step_loss(prepared, fb, rb)
        if not torch.isfinite(loss):
            raise UnlearnError(f"the unlearning loss became {loss.item()} at step {steps + 1}; "
                               f"lower lr (now {args.lr})")
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if args.grad_clip > 0:
            acc.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        steps += 1
        if on_step is not None:
            on_step(steps, args.max_steps, {"loss": float(loss.detach()), **stats})
        if args.eval_every and steps % args.eval_every == 0:
            stopped = check(steps)
    if monitor is not None and (not history or history[-1]["step"] != steps):
        check(steps)
    prepared.eval()
    model = acc.unwrap_model(prepared)
    for p in model.parameters():
        p.requires_grad_(True)
    return UnlearnResult(model, steps, reason, message, time.perf_counter() - start, peak_memory_mb(acc.device),
                         history)
