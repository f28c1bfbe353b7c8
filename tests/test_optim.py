"""Sophia against its update formula computed by hand, and IAU's gradient restriction."""

from __future__ import annotations

import pytest
import torch

from unlearn.errors import ConfigError
from unlearn.optim import Sophia, hessian_mode, set_tokens


def test_one_sophia_step_equals_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    theta0 = torch.randn(50, generator=gen)
    g_hess, g = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    lr, (b1, b2), rho, eps, wd, tokens = 0.1, (0.9, 0.95), 0.04, 1e-3, 0.01, 37.0
    p = torch.nn.Parameter(theta0.clone())
    opt = Sophia([p], lr=lr, betas=(b1, b2), rho=rho, eps=eps, weight_decay=wd)
    set_tokens(opt, tokens)
    p.grad = g_hess.clone()
    with hessian_mode(opt, "square"):
        opt.step()
    assert torch.equal(p.detach(), theta0)  # a Hessian refresh moves nothing
    p.grad = g.clone()
    opt.step()
    h = (1 - b2) * g_hess ** 2
    m = (1 - b1) * g
    ratio = m / torch.clamp(rho * tokens * h, min=eps)
    want = theta0 * (1 - lr * wd) - lr * ratio.clamp(-1, 1)
    assert torch.allclose(p.detach(), want, atol=1e-6)
    clipped = (ratio.abs() >= 1).float().mean()
    assert 0 < clipped < 1  # the case exercises both the clipped and the preconditioned branch
    # Second step: EMAs carry over; h unchanged without a refresh.
    p.grad = g.clone()
    opt.step()
    m2 = b1 * m + (1 - b1) * g
    want2 = want * (1 - lr * wd) - lr * (m2 / torch.clamp(rho * tokens * h, min=eps)).clamp(-1, 1)
    assert torch.allclose(p.detach(), want2, atol=1e-6)


def test_sophia_raw_hessian_sq_grad_and_double_momentum() -> None:
    g = torch.tensor([0.5, -2.0, 0.0])
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Sophia([p], lr=1.0, betas=(0.5, 0.5), rho=1.0, eps=1e-12, hessian_from_grad=True, double_momentum=True)
    p.grad = g.clone()
    opt.step()
    h = 0.5 * g ** 2
    m = 0.5 * (0.5 * g) + 0.5 * g  # updated twice
    want = -(m / torch.clamp(h, min=1e-12)).clamp(-1, 1)
    assert torch.allclose(p.detach(), want)
    q = torch.nn.Parameter(torch.zeros(3))
    opt2 = Sophia([q], betas=(0.9, 0.5))
    q.grad = torch.tensor([-1.0, 2.0, 3.0])
    with hessian_mode(opt2, "raw"):
        opt2.step()
    assert torch.allclose(opt2.state[q]["hessian"], 0.5 * torch.tensor([-1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match="rho"):
        Sophia([q], rho=0.0)


def test_gradient_restriction_is_alpha_times_gradient_norms() -> None:
    from unlearn.methods.iau import gradient_restriction

    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    loss = (lin(x) ** 2).mean()
    grads = torch.autograd.grad(loss, list(lin.parameters()), retain_graph=True)
    reg = gradient_restriction(0.5)(lin, loss)
    assert torch.allclose(reg, 0.5 * sum(g.norm() for g in grads))
    reg.backward()  # differentiable (double backward) so it can be trained against
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0
