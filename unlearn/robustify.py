"""A robustification stage after any unlearner (UNDO, "Distillation robustifies unlearning", Lee et al. 2025):
shrink and perturb the unlearned weights toward a random initialisation, then distil the unlearned model's
outputs back into them on retain data, so that what the unlearner only suppressed is no longer in the weights
for relearning to find.

    W <- (1 - alpha) W + alpha * beta * N   (N Xavier-uniform, beta 0.1; 1-D weights, norms and biases, only shrunk)
    then minimise KL(p_teacher || p_theta) over every next-token position of retain records,

the teacher being the unlearned model, until the student's retain NLL is within ``tolerance`` of the teacher's
(checked every ``eval_every`` steps on a fixed retain sample) or ``steps`` run out. ``alpha`` = 0 is off; the
larger it is, the more is forgotten and the longer the repair (the paper's cost/robustness frontier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearn.data import Batch, Record
from unlearn.jsonio import JsonObject
from unlearn.logprobs import forward_logits, token_logprobs
from unlearn.loop import frozen_copy, run_loop
from unlearn.losses import masked_kl
from unlearn.params import apply_scope
from unlearn.unlearner import UnlearnArgs, UnlearnResult

EVAL_RECORDS = 256  # the retain sample the repair is judged on


def shrink_perturb(params: Sequence[torch.nn.Parameter], alpha: float, beta: float, seed: int) -> None:
    """In place: W <- (1 - alpha) W + alpha beta N (Xavier-uniform N) for matrices, W <- (1 - alpha) W otherwise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.mul_(1 - alpha)
            if p.dim() >= 2:
                fan_out, fan_in = p.shape[0], p[0].numel()
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                noise = (torch.rand(p.shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
                p.add_(noise.to(p.device, p.dtype), alpha=alpha * beta)


def all_positions_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_theta) averaged over every next-token position of real tokens (``mask`` [B, T])."""
    return masked_kl(logits, torch.log_softmax(teacher_logits.float(), -1), mask[:, 1:].bool())


def retain_nll(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record]) -> float:
    """Mean over records of the mean answer-token NLL (the scores' one forward pass, no moments or hits)."""
    return -float(token_logprobs(model, tokenizer, records, moments=False, hits=False).mean_lp().mean())


def robustify(model: torch.nn.Module, tokenizer: Any, retain: Sequence[Record], args: UnlearnArgs, *,
              accelerator: Any = None) -> UnlearnResult:
    """The stage on ``model`` (changed in place and returned in the result), with the method's scope and seed and
    the ``robustify_*`` arguments; ``stats``: alpha, steps, the teacher's and the student's retain NLL."""
    teacher = frozen_copy(model)
    sample = retain[:: max(1, len(retain) // EVAL_RECORDS)][:EVAL_RECORDS]
    goal = retain_nll(teacher, tokenizer, sample) * (1 + args.robustify_tolerance)
    shrink_perturb(apply_scope(model, args.scope), args.robustify_alpha, 0.1, args.seed)
    distil = UnlearnArgs(lr=args.robustify_lr, max_steps=args.robustify_steps, batch_size=args.retain_batch_size,
                         retain_batch_size=args.retain_batch_size, scope=args.scope, seed=args.seed, eval_every=10,
                         gradient_checkpointing=args.gradient_checkpointing)

    def step(m: torch.nn.Module, rb: Batch, _: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            t = forward_logits(teacher, rb)
        loss = all_positions_kl(forward_logits(m, rb), t, rb.attention_mask)
        return loss, {"distil_kl": float(loss.detach())}

    def repaired(m: torch.nn.Module, at: int) -> tuple[str | None, str, JsonObject]:
        value = retain_nll(m, tokenizer, sample)
        done = value <= goal
        return ("repaired" if done else None, f"retain NLL {value:.4f} (goal {goal:.4f})", {"retain_nll": value})

    res = run_loop(model, tokenizer, retain, [], distil, step, uses_retain=False, monitor=repaired,
                   accelerator=accelerator)
    final = res.history[-1]["retain_nll"]
    res.stats.update(alpha=args.robustify_alpha, goal_nll=goal, retain_nll=final, repaired=final <= goal)
    return res
