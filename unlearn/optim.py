"""Sophia (Liu et al. 2023), the optimiser behind SOUL, usable around any loss.

m <- b1 m + (1 - b1) g;  h <- b2 h + (1 - b2) h_hat (when refreshed);
theta <- theta (1 - lr wd) - lr * clip(m / max(gamma h, eps), -1, 1),  gamma = rho * tokens.

The Hessian-diagonal estimate enters through ``step()`` itself so that it also works where an engine
(DeepSpeed ZeRO) owns the parameters: put h_hat's ingredient into ``.grad``, switch the param groups with
``hessian_mode(opt, "square")`` (h_hat = grad * grad, Sophia-G / GNB) or ``"raw"`` (h_hat = grad, e.g.
Hutchinson's u * Hu), call ``step()``: the EMA is updated and no parameter moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from unlearn.errors import ConfigError


class Sophia(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 rho: float = 0.04, eps: float = 1e-15, weight_decay: float = 0.0, *,
                 hessian_from_grad: bool = False, double_momentum: bool = False) -> None:
        """``hessian_from_grad``: h_hat = g * g of the loss being minimised, every step (the SOUL code's
        estimator). ``double_momentum``: update m twice per step, as the SOUL code does (compatibility
        only)."""
        if lr <= 0 or rho <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"Sophia: need lr, rho, eps > 0 and betas in [0, 1), got lr={lr} rho={rho} "
                              f"eps={eps} betas={betas}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, eps=eps, weight_decay=weight_decay, tokens=1.0,
                        mode="step", hessian_from_grad=hessian_from_grad, double_momentum=double_momentum)
        super().__init__(params, defaults)

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self._state(p)
                h = state["hessian"]
                if group["mode"] == "square" or (group["mode"] == "step" and group["hessian_from_grad"]):
                    h.mul_(b2).addcmul_(g, g, value=1 - b2)
                elif group["mode"] == "raw":
                    h.mul_(b2).add_(g, alpha=1 - b2)
                if group["mode"] != "step":
                    continue
                m = state["exp_avg"]
                for _ in range(2 if group["double_momentum"] else 1):
                    m.mul_(b1).add_(g, alpha=1 - b1)
                state["step"] += 1
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                denom = (group["rho"] * group["tokens"] * h).clamp(min=group["eps"])
                p.add_((m / denom).clamp(-1.0, 1.0), alpha=-group["lr"])
        return loss


@contextlib.contextmanager
def hessian_mode(opt: torch.optim.Optimizer, mode: str) -> Iterator[None]:
    """Within: ``step()`` updates the Hessian EMA from ``.grad`` (``square`` or ``raw``) and moves nothing."""
    if mode not in ("square", "raw"):
        raise ConfigError(f"hessian mode must be square or raw, got '{mode}'")
    for g in opt.param_groups:
        g["mode"] = mode
    try:
        yield
    finally:
        for g in opt.param_groups:
            g["mode"] = "step"


def set_tokens(opt: torch.optim.Optimizer, tokens: float) -> None:
    """gamma = rho * tokens: the number of labelled tokens behind the mean-loss GNB estimate."""
    for g in opt.param_groups:
        g["tokens"] = float(tokens)
