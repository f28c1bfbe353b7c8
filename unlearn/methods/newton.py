"""Newton step (influence removal) on a parameter scope, with a retain-gradient certificate.

retain form: theta <- theta - lr (H_R + lambda I)^-1 grad L_R(theta)   (exact for a quadratic loss)
forget form: theta <- theta + lr (n_f / n_r) (H_R + lambda I)^-1 grad L_F(theta)
The two agree at a stationary point of the full loss; a fine-tuned LM is not one.

Engines: the model stays unwrapped and replicated; each process takes a shard of every data set and the
gradient / curvature sums are all-reduced (data parallel). Exact-product backends (hessian, ggn, dense,
hutchinson) need double backward and an unsharded model: under a ZeRO-3 or FSDP launch the method warns
and uses EK-FAC instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import arg
from unlearn.curvature import (
    BACKENDS,
    Curvature,
    Objective,
    Source,
    Vec,
    build_curvature,
    gradient,
    lm_objective,
    lm_source,
    needs_double_backward,
    norm,
)
from unlearn.data import Record, subsample
from unlearn.distributed import engine, make_accelerator
from unlearn.errors import ConfigError, UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.loop import STOPPER_STATS, check_sets, run_direct
from unlearn.params import apply_scope
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult, register


@dataclass
class NewtonArgs(UnlearnArgs):
    lr: float = arg(1.0, "step size on the Newton direction (1 = full step)", gt=0)
    max_steps: int = arg(20, "Newton steps (gradient and curvature recomputed), under the stopping rule", ge=1)
    batch_size: int = arg(32, "examples per batch for gradients and curvature", ge=1)
    eval_every: int = arg(1, "steps between stopping-rule checks; 0 = never", ge=0)
    scope: str = arg("last:1", "parameters to change: all, last:N, regex:PATTERN")
    form: str = arg("forget", "forget (theta + lr n_f/n_r H^-1 grad L_F) or retain (theta - H^-1 grad L_R); "
                    "one retain-form step barely moves the forget set on the built-in benchmark",
                    choices=("retain", "forget"))
    curvature: str = arg("ekfac", "curvature backend of H_R", choices=BACKENDS)
    solver: str = arg("cg", "cg or lissa (product backends)", choices=("cg", "lissa"))
    damping: float | None = arg(None, "lambda; default 1e-3 for product backends, 0.1 x mean eigenvalue per "
                                "tensor/layer otherwise", ge=0)
    curvature_examples: int = arg(256, "retain records sampled for H_R (0 = all)", ge=0)
    gradient_examples: int = arg(0, "retain records for grad L_R (0 = all)", ge=0)
    solver_iters: int = arg(30, "CG / LiSSA iterations", ge=1)
    solver_tol: float = arg(1e-4, "CG relative residual tolerance", gt=0)
    lissa_scale: float = arg(0.0, "0 = 1.5 x largest eigenvalue by power iteration", ge=0)
    lissa_damp: float = arg(0.0, "LiSSA damping of the recursion", ge=0, lt=1)
    samples: int = arg(1, "label samples per batch for gnb / hutchinson", ge=1)
    max_update_ratio: float = arg(0.05, "trust region: scale a step down to at most this x ||theta_scope|| "
                                  "(0 = off)", ge=0)


def newton_direction(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                     curvature: Curvature, *, form: str, retain: Source, forget: Source | None = None,
                     n_forget: int = 0, n_retain: int = 1, damping: float | None = None) -> tuple[Vec, Vec]:
    """The update delta (before the step size) and the gradient it was solved for."""
    if form == "retain":
        g = gradient(params, model, objective, retain)
        return [-t for t in curvature.solve(g, damping)], g
    if forget is None:
        raise ConfigError("the forget form needs the forget set")
    g = gradient(params, model, objective, forget)
    return [t * (n_forget / n_retain) for t in curvature.solve(g, damping)], g


@register("newton", NewtonArgs, "Newton step (influence removal) with H_R from a chosen curvature backend")
def newton(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
           args: NewtonArgs, *, monitor: Monitor | None = None, accelerator: Any = None,
           on_step: Any = None) -> UnlearnResult:
    check_sets(forget, retain, uses_retain=True)  # H_R needs the retain set
    torch.manual_seed(args.seed)
    kind = engine(make_accelerator(accelerator))  # also joins the process group when launched
    backend = args.curvature
    if kind in ("deepspeed-zero3", "fsdp") and needs_double_backward(backend):
        backend = "ekfac"
        warnings.warn(f"newton: curvature '{args.curvature}' needs double backward, impossible under {kind}; "
                      "using 'ekfac' (first-order K-FAC) instead", stacklevel=2)
    params = apply_scope(model, args.scope)
    objective = lm_objective()
    curv_src = lm_source(subsample(retain, args.curvature_examples, args.seed), tokenizer, args.batch_size, model)
    grad_src = lm_source(subsample(retain, args.gradient_examples, args.seed + 1), tokenizer, args.batch_size, model)
    forget_src = lm_source(forget, tokenizer, args.batch_size, model)
    model.eval()
    certificate: JsonObject = {"retain_grad_norm_before": norm(gradient(params, model, objective, grad_src))}

    def update(step: int) -> JsonObject:
        curv = build_curvature(backend, params, model, objective, curv_src, solver=args.solver,
                               max_iter=args.solver_iters, tol=args.solver_tol, lissa_scale=args.lissa_scale,
                               lissa_damp=args.lissa_damp, samples=args.samples, seed=args.seed + step)
        delta, g = newton_direction(params, model, objective, curv, form=args.form, retain=grad_src,
                                    forget=forget_src, n_forget=len(forget), n_retain=len(retain),
                                    damping=args.damping)
        if not all(torch.isfinite(t).all() for t in delta):
            raise UnlearnError(f"the Newton update is not finite at step {step}: raise damping "
                               f"(now {args.damping}) or use curvature ggn")
        step_size, size = args.lr, args.lr * norm(delta)
        bound = args.max_update_ratio * norm([p.detach() for p in params])
        if bound and size > bound:
            step_size, size = step_size * bound / size, bound
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.add_(d.to(p.dtype), alpha=step_size)
        info = getattr(curv, "info", None)
        return {"update_norm": size, "trust_region_scale": step_size / args.lr, "grad_norm": norm(g),
                "solver_iterations": float(info.iterations) if info else 0.0,
                "solver_residual": float(info.relative_residual) if info else 0.0}

    result = run_direct(model, args, update, monitor=monitor, on_step=on_step)
    certificate["retain_grad_norm_after"] = norm(gradient(params, model, objective, grad_src))
    stopper = {k: result.stats.pop(k) for k in STOPPER_STATS if k in result.stats}  # the back-off, kept
    certificate["last_step"] = result.stats
    certificate["note"] = ("residual ||grad L_R|| after the step; certifies removal (Guo et al.) only for "
                           "convex models trained with loss perturbation")
    result.stats = {"certificate": certificate, "curvature": backend, "form": args.form, "engine": kind, **stopper}
    return result
