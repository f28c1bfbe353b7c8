"""Gradient ascent (UnTrac's unlearning step) and GradDiff."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.data import Batch, Record
from unlearn.loop import StepLoss, frozen_copy, run_loop
from unlearn.losses import ga_loss, graddiff_loss, retain_kl, retain_nll, sequence_logprobs
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult, register


@dataclass
class GradAscentArgs(UnlearnArgs):
    pass


@dataclass
class RetainArgs(UnlearnArgs):
    retain_loss: str = arg("nll", "nll (retain NLL) or kl (KL to the original model)", choices=("nll", "kl"))
    retain_weight: float = arg(1.0, "alpha, weight of the retain term", ge=0)


@dataclass
class GradDiffArgs(RetainArgs):
    forget_weight: float = arg(1.0, "gamma, weight of the ascent term", ge=0)


def retain_term(args: RetainArgs, ref: torch.nn.Module | None) -> Any:
    """The retain part of a loss, ``(model, retain_batch) -> scalar``, NLL or KL to the original model."""

    def term(model: torch.nn.Module, rb: Batch) -> torch.Tensor:
        lp, n, logits = sequence_logprobs(model, rb)
        if args.retain_loss == "nll":
            return retain_nll(lp, n)
        assert ref is not None
        with torch.no_grad():
            ref_logits = ref(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
        return retain_kl(logits, ref_logits, rb.labels)

    return term


def add_retain(loss: torch.Tensor, stats: dict[str, float], model: torch.nn.Module, rb: Batch | None,
               args: RetainArgs, term: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """``loss + retain_weight * retain_term`` when the method has a retain term."""
    if args.retain_weight > 0 and rb is not None:
        r = term(model, rb)
        loss = loss + args.retain_weight * r
        stats["retain"] = float(r.detach())
    return loss, stats


@register("grad_ascent", GradAscentArgs, "gradient ascent on the forget set (UnTrac's unlearning step)")
def grad_ascent(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
                args: GradAscentArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
                on_step: Any = None) -> UnlearnResult:
    def step(m: torch.nn.Module, fb: Batch, rb: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        lp, n, _ = sequence_logprobs(m, fb)
        loss = ga_loss(lp, n)
        return loss, {"forget_nll": float(-loss.detach())}

    return run_loop(model, tokenizer, forget, retain, args, step, uses_retain=False, monitor=monitor,
                    accelerator=accelerator, on_step=on_step)


@register("graddiff", GradDiffArgs, "gradient ascent on forget + descent on retain (NLL or KL)")
def graddiff(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
             args: GradDiffArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
             on_step: Any = None) -> UnlearnResult:
    term = retain_term(args, frozen_copy(model) if args.retain_loss == "kl" else None)
    return run_loop(model, tokenizer, forget, retain, args, graddiff_step(args, term), uses_retain=True,
                    monitor=monitor, accelerator=accelerator, on_step=on_step)


def graddiff_step(args: GradDiffArgs, term: Any) -> StepLoss:
    """GradDiff's per-step loss (also SOUL's with ``loss: graddiff``); needs a retain batch."""

    def step(m: torch.nn.Module, fb: Batch, rb: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        assert rb is not None
        lp, n, _ = sequence_logprobs(m, fb)
        r = term(m, rb)
        loss = graddiff_loss(lp, n, r, args.forget_weight, args.retain_weight)
        return loss, {"forget_nll": float(-(lp / n).mean().detach()), "retain": float(r.detach())}

    return step
