"""SOUL (Jia et al., 2024): the Sophia optimiser around an unlearning loss (GradDiff or NPO).

Hessian-diagonal estimates h_hat (``hessian``):
- ``gnb``: Sophia-G. Every ``hessian_every`` steps (from the first), labels are sampled from the model
  on the step's forget and retain inputs, g_hat = grad of their mean CE, h_hat = g_hat * g_hat and
  gamma = rho * (labelled tokens, all processes): tokens * g_hat^2 estimates the GGN diagonal of a mean loss.
- ``hutchinson``: h_hat = u * (H u) of the unlearning loss, u Rademacher (double backward), gamma = rho.
- ``sq_grad``: the SOUL code's estimator, g * g of the unlearning loss every step, gamma = rho * tokens;
  ``double_momentum`` reproduces that code's second momentum update per step (compatibility only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.curvature import double_backward_ok, sampled_token_ce
from unlearn.data import Batch, Record
from unlearn.errors import ConfigError
from unlearn.logprobs import forward_logits
from unlearn.loop import frozen_copy, run_loop
from unlearn.methods.gradient import GradDiffArgs, graddiff_step, retain_term
from unlearn.methods.npo import NPOArgs, npo_step
from unlearn.optim import Sophia, hessian_mode, set_tokens
from unlearn.unlearner import Monitor, UnlearnResult, register


@dataclass
class SOULArgs(GradDiffArgs, NPOArgs):
    """GradDiff's and NPO's arguments (forget_weight, beta, retain term) plus Sophia's."""

    loss: str = arg("graddiff", "graddiff or npo", choices=("graddiff", "npo"))
    betas: tuple[float, float] = arg((0.9, 0.95), "Sophia's (beta1, beta2)", ge=0, lt=1)
    rho: float = arg(0.04, "gamma = rho x tokens per batch", gt=0)
    eps: float = arg(1e-15, "floor of the preconditioner", gt=0)
    hessian: str = arg("gnb", "gnb (Sophia-G), hutchinson or sq_grad (the SOUL code)",
                       choices=("gnb", "hutchinson", "sq_grad"))
    hessian_every: int = arg(10, "k: steps between gnb/hutchinson refreshes", ge=1)
    double_momentum: bool = arg(False, "the SOUL code's second momentum update per step (compatibility)")
    gamma_tokens: int = arg(0, "gamma = rho x this; 0 = the labelled tokens of the step (Sophia-G); the SOUL code "
                            "never passes bs to Sophia, so its gamma is rho x 5120", ge=0)


def _tokens(batches: Sequence[Batch | None], acc: Any) -> float:
    n = torch.tensor(float(sum(int((b.labels[:, 1:] != -100).sum()) for b in batches if b is not None)))
    return float(acc.reduce(n.to(acc.device), reduction="sum")) if acc.num_processes > 1 else float(n)


def row_seeds(seed: int, step: int, tag: int, batch: Batch, acc: Any) -> list[int]:
    """One seed per row from its index in the global batch (each process holds an equal slice)."""
    first = acc.process_index * len(batch)
    return [hash((seed, step, tag, first + i)) % 2**63 for i in range(len(batch))]


@register("soul", SOULArgs, "SOUL: Sophia (clipped diagonal second-order) around the GradDiff or NPO loss")
def soul(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
         args: SOULArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
         on_step: Any = None) -> UnlearnResult:
    ref = frozen_copy(model) if args.loss == "npo" or args.retain_loss == "kl" else None
    term = retain_term(args, ref)
    gen = torch.Generator().manual_seed(args.seed)

    # the same per-step losses as the GradDiff and NPO methods; only the optimiser differs
    step_loss = npo_step(args, ref, term) if args.loss == "npo" else graddiff_step(args, term)

    def before_step(m: torch.nn.Module, fb: Batch, rb: Batch | None, step: int, opt: Any, acc: Any) -> None:
        tokens = _tokens([fb, rb], acc)
        set_tokens(opt, args.gamma_tokens or (1.0 if args.hessian == "hutchinson" else tokens))
        if args.hessian == "sq_grad" or step % args.hessian_every:
            return
        opt.zero_grad(set_to_none=True)
        # Under DeepSpeed the engine steps inside acc.backward (opt.step is a no-op), so the Hessian mode
        # must already be set when the sampled loss is back-propagated.
        with hessian_mode(opt, "square" if args.hessian == "gnb" else "raw"):
            if args.hessian == "gnb":
                ces = [sampled_token_ce(forward_logits(m, b), b.labels, row_seeds(args.seed, step, tag, b, acc))
                       for tag, b in enumerate((fb, rb)) if b is not None]
                # mean CE over the global batch's tokens: DDP / ZeRO average the ranks' gradients
                acc.backward(sum(ce * c for ce, c in ces) * acc.num_processes / tokens)
            else:
                if acc.state.deepspeed_plugin is not None:
                    raise ConfigError("SOUL hessian: hutchinson needs double backward, which DeepSpeed does not "
                                      "support; use gnb or sq_grad")
                params = [p for p in m.parameters() if p.requires_grad]
                with double_backward_ok():
                    loss, _ = step_loss(m, fb, rb)
                    g = torch.autograd.grad(loss, params, create_graph=True)
                    u = [torch.randint(0, 2, p.shape, generator=gen).to(p) * 2 - 1 for p in params]
                    hu = torch.autograd.grad(g, params, grad_outputs=u)
                for p, ui, h in zip(params, u, hu):
                    p.grad = ui * h
            opt.step()
        opt.zero_grad(set_to_none=True)

    def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return Sophia(params, lr=args.lr, betas=args.betas, rho=args.rho, eps=args.eps,
                      weight_decay=args.weight_decay, hessian_from_grad=args.hessian == "sq_grad",
                      double_momentum=args.double_momentum)

    return run_loop(model, tokenizer, forget, retain, args, step_loss,
                    uses_retain=args.loss == "graddiff" or args.retain_weight > 0, monitor=monitor,
                    accelerator=accelerator, on_step=on_step,
                    make_optimizer=make_optimizer, before_step=before_step)
