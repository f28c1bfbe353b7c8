"""IAU: Efficient Machine Unlearning via Influence Approximation (Liu et al., 2025).

Removing z has the influence of adding a point with gradient -grad l(z), so the influence update is
approximated by one incremental-learning step:  theta_u = theta - lr * P(grad L_R - grad L_F), both
gradients accumulated over the whole retain and forget sets (batch by batch, never one giant batch).

Choices where the paper leaves one (documented here):
- P = ``adam`` (default): the public code's single step of a freshly created Adam (lr 1e-3), which on its
  first step is lr * g / (|g| + eps), i.e. close to sign(g); with ``max_steps`` > 1 the same Adam keeps
  its moments. P = ``identity``: the paper's plain gradient step.
- L_R and L_F are means over their sets (the toolkit's mean-loss convention), so the forget term is not
  rescaled by n_f / n_r; ``forget_weight`` scales it if wanted.
- The paper's gradient restriction (loss + alpha * sum over tensors of ||grad||_2 at training time) is
  ``gradient_restriction(alpha)``, a regulariser for ``unlearn.training.train_lm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.curvature import gradient, lm_objective, lm_source, norm
from unlearn.data import Record, subsample
from unlearn.distributed import make_accelerator
from unlearn.jsonio import JsonObject
from unlearn.loop import check_sets, run_direct
from unlearn.params import apply_scope
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult, register


@dataclass
class IAUArgs(UnlearnArgs):
    lr: float = arg(1e-3, "step size (the public code: one Adam step, lr 1e-3)", gt=0)
    max_steps: int = arg(10, "k: influence steps (repeated under the stopping rule, same Adam moments)", ge=1)
    batch_size: int = arg(32, "examples per gradient-accumulation batch", ge=1)
    eval_every: int = arg(1, "steps between stopping-rule checks; 0 = never", ge=0)
    preconditioner: str = arg("adam", "adam (public code) or identity (paper)", choices=("adam", "identity"))
    forget_weight: float = arg(1.0, "weight of grad L_F", ge=0)
    retain_examples: int = arg(0, "retain records in grad L_R (0 = all)", ge=0)
    adam_betas: tuple[float, float] = arg((0.9, 0.999), "Adam's (beta1, beta2)", ge=0, lt=1)
    adam_eps: float = arg(1e-8, "Adam's epsilon", gt=0)


@register("iau", IAUArgs, "influence approximation unlearning: one (or k) steps along grad L_R - grad L_F")
def iau(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record], args: IAUArgs,
        *, monitor: Monitor | None = None, accelerator: Any = None, on_step: Any = None) -> UnlearnResult:
    check_sets(forget, retain, uses_retain=True)
    torch.manual_seed(args.seed)
    make_accelerator(accelerator)  # joins the process group when launched: data sharded, sums all-reduced
    params = apply_scope(model, args.scope)
    objective = lm_objective()
    retain_src = lm_source(subsample(retain, args.retain_examples, args.seed), tokenizer, args.batch_size, model)
    forget_src = lm_source(forget, tokenizer, args.batch_size, model)
    opt = torch.optim.Adam(params, lr=args.lr, betas=args.adam_betas, eps=args.adam_eps) \
        if args.preconditioner == "adam" else torch.optim.SGD(params, lr=args.lr)
    model.eval()

    def update(step: int) -> JsonObject:
        gr = gradient(params, model, objective, retain_src)
        gf = gradient(params, model, objective, forget_src)
        before = [p.detach().clone() for p in params]
        for p, r, f in zip(params, gr, gf):
            p.grad = (r - args.forget_weight * f).to(p.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"update_norm": norm([p.detach() - b for p, b in zip(params, before)]),
                "retain_grad_norm": norm(gr), "forget_grad_norm": norm(gf)}

    return run_direct(model, args, update, monitor=monitor, on_step=on_step)


def gradient_restriction(alpha: float = 0.005) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """IAU's training-time regulariser alpha * sum_tensors ||grad loss||_2 (double backward), which keeps
    per-sample gradients small so the first-order influence approximation holds when unlearning later."""

    def regulariser(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        return alpha * sum(g.norm() for g in grads if g is not None)  # type: ignore[return-value]

    return regulariser
