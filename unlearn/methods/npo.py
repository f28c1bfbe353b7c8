"""NPO (reference model) and SimNPO (length-normalised, no reference), each with a retain term."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.data import Batch, Record
from unlearn.loop import StepLoss, frozen_copy, run_loop
from unlearn.losses import npo_loss, sequence_logprobs, simnpo_loss
from unlearn.methods.gradient import RetainArgs, add_retain, retain_term
from unlearn.unlearner import Monitor, UnlearnResult, register


@dataclass
class NPOArgs(RetainArgs):
    beta: float = arg(0.1, "inverse temperature of NPO", gt=0)
    forget_weight: float = arg(1.0, "gamma, weight of the NPO term (open-unlearning's gamma)", ge=0)


@dataclass
class SimNPOArgs(RetainArgs):
    lr: float = arg(5e-4, "learning rate", gt=0)
    beta: float = arg(4.5, "inverse temperature of SimNPO", gt=0)
    delta: float = arg(0.0, "reward margin: sigma(beta lbar - delta) (the paper's gamma); open-unlearning writes "
                       "sigma(beta (lbar - delta_ou)), i.e. delta = beta x delta_ou")
    forget_weight: float = arg(1.0, "weight of the SimNPO term (open-unlearning's gamma, 0.125 there)", ge=0)


@register("npo", NPOArgs, "negative preference optimisation against the original model, + retain term")
def npo(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record], args: NPOArgs,
        *, monitor: Monitor | None = None, accelerator: Any = None, on_step: Any = None) -> UnlearnResult:
    ref = frozen_copy(model)
    return run_loop(model, tokenizer, forget, retain, args, npo_step(args, ref, retain_term(args, ref)),
                    uses_retain=args.retain_weight > 0, monitor=monitor, accelerator=accelerator, on_step=on_step)


def npo_step(args: NPOArgs, ref: torch.nn.Module, term: Any) -> StepLoss:
    """NPO's per-step loss against the frozen ``ref`` (also SOUL's with ``loss: npo``); ``args.beta``."""

    def step(m: torch.nn.Module, fb: Batch, rb: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        lp, n, _ = sequence_logprobs(m, fb)
        with torch.no_grad():
            ref_lp, _, _ = sequence_logprobs(ref, fb)
        forget_term = args.forget_weight * npo_loss(lp, ref_lp, args.beta)
        stats = {"npo": float(forget_term.detach()), "forget_nll": float(-(lp / n).mean().detach())}
        return add_retain(forget_term, stats, m, rb, args, term)

    return step


@register("simnpo", SimNPOArgs, "SimNPO: length-normalised NPO without a reference model, + retain term")
def simnpo(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
           args: SimNPOArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
           on_step: Any = None) -> UnlearnResult:
    term = retain_term(args, frozen_copy(model) if args.retain_loss == "kl" else None)

    def step(m: torch.nn.Module, fb: Batch, rb: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        lp, n, _ = sequence_logprobs(m, fb)
        forget_term = args.forget_weight * simnpo_loss(lp, n, args.beta, args.delta)
        stats = {"simnpo": float(forget_term.detach()), "forget_nll": float(-(lp / n).mean().detach())}
        return add_retain(forget_term, stats, m, rb, args, term)

    return run_loop(model, tokenizer, forget, retain, args, step, uses_retain=args.retain_weight > 0,
                    monitor=monitor, accelerator=accelerator, on_step=on_step)
