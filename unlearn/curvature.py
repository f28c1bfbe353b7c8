"""Curvature of a loss over a parameter scope, streamed over batches, never materialised in full.

Vectors are lists of tensors aligned with the scoped parameters (one tensor per parameter), so the
curvature stays per parameter scope and nothing is flattened into one model-sized buffer.

Backends (all share ``hvp(v)``, ``diag()`` and ``solve(b, damping)``):

- ``Hessian``      exact Hessian-vector products by double backward (not under ZeRO-3 / FSDP sharding);
- ``GaussNewton``  exact Gauss-Newton (GGN) products J^T H_z J v, PSD, also by double backward;
- ``Diagonal``     a diagonal estimate: Gauss-Newton-Bartlett (sampled labels), empirical Fisher
                   (per-example loop) or Hutchinson; first-order gradients only for the first two;
- ``KFAC``         Kronecker factors per ``nn.Linear`` (K-FAC, or EK-FAC with eigenvalues refitted
                   in the Kronecker eigenbasis); other scoped parameters get the GNB diagonal.

Product backends solve (H + lambda I) x = b by conjugate gradient or LiSSA.

Data is a ``Source``: a callable returning an iterable of ``(batch, weight)`` pairs whose weights sum
to 1 over all processes (each process yields its own shard; sums are all-reduced).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from unlearn.data import collate, encode_many, pad_id_of
from unlearn.distributed import rank_world
from unlearn.errors import ConfigError, UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.logprobs import forward_logits, max_length_of
from unlearn.losses import nll, target_logprobs
from unlearn.registry import Registry

Vec = list[torch.Tensor]
Source = Callable[[], Iterable[tuple[Any, float]]]


# ---------------------------------------------------------------------------------------------- vectors

def dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def norm(a: Vec) -> float:
    return float(dot(a, a).sqrt())


def axpy(alpha: float | torch.Tensor, x: Vec, y: Vec) -> Vec:
    """alpha * x + y."""
    return [alpha * xi + yi for xi, yi in zip(x, y, strict=True)]


def zeros_like(params: Sequence[torch.Tensor]) -> Vec:
    return [torch.zeros_like(p, dtype=torch.float32) for p in params]


def all_reduce(vec: Vec) -> Vec:
    """Sum over processes (no-op in one process)."""
    if rank_world()[1] > 1:
        for t in vec:
            torch.distributed.all_reduce(t)
    return vec


@contextlib.contextmanager
def double_backward_ok() -> Iterator[None]:
    """SDPA's fused CPU/GPU kernels have no double backward; the math kernel does (same numbers)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


# -------------------------------------------------------------------------------------------- objective

@dataclass(frozen=True)
class Objective:
    """How to get a loss out of a model and a batch.

    ``loss(model, batch)``: the mean loss of the batch (what H is the Hessian of).
    ``logits(model, batch)`` and ``logits_loss(z, batch)``: the same loss split at the network output,
    for Gauss-Newton products. ``sampled_loss(z, batch, gen)``: per-example losses ``[B]`` with labels
    sampled from the model, scaled so that E[grad s_i grad s_i^T] is the GGN of example i
    (for K-FAC and the GNB diagonal). ``token_mask(batch)``: positions to count for K-FAC factors.
    """

    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    logits: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    logits_loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    sampled_loss: Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor] | None = None
    token_mask: Callable[[Any], torch.Tensor] | None = None


def _lm_logits_loss(z: torch.Tensor, batch: Any) -> torch.Tensor:
    return nll(*target_logprobs(z, batch.labels))


def _lm_sampled_loss(z: torch.Tensor, batch: Any, gen: torch.Generator) -> torch.Tensor:
    """Per example sum_t CE(z_t, y_t ~ softmax(z_t)) / sqrt(T_i) over the labelled positions.

    For l_i = (1/T_i) sum_t CE_t the GGN is (1/T_i) sum_t F_t, and E[grad CE_t grad CE_t^T] = F_t with
    independent zero-mean terms across t, hence the 1/sqrt(T_i)."""
    mask = batch.labels[:, 1:] != -100
    logp = torch.log_softmax(z[:, :-1].float(), -1)
    with torch.no_grad():
        probs = logp.detach().exp().reshape(-1, logp.shape[-1])
        sampled = torch.multinomial(probs.cpu(), 1, generator=gen).to(z.device).reshape(mask.shape)
    tok = logp.gather(-1, sampled[..., None])[..., 0] * mask
    return -tok.sum(1) / mask.sum(1).clamp(min=1).sqrt()


def lm_objective() -> Objective:
    """Mean (over examples) of the mean token NLL of the labelled tokens, for causal LMs and ``Batch``es."""
    return Objective(loss=lambda m, b: _lm_logits_loss(forward_logits(m, b), b), logits=forward_logits,
                     logits_loss=_lm_logits_loss, sampled_loss=_lm_sampled_loss,
                     token_mask=lambda b: b.attention_mask.bool())


def lm_source(records: Sequence[Any], tokenizer: Any, batch_size: int, model: torch.nn.Module) -> Source:
    """Batches of ``records`` for ``model`` (its device and context length; this process's shard when
    distributed), weighted by their share of all."""
    rank, world = rank_world()
    device = next(model.parameters()).device
    encoded = encode_many(records, tokenizer, max_length_of(model))
    mine = encoded[rank::world]
    pad, total = pad_id_of(tokenizer), len(encoded)

    def source() -> Iterator[tuple[Any, float]]:
        for i in range(0, len(mine), batch_size):
            chunk = mine[i:i + batch_size]
            yield collate(chunk, pad).to(device), len(chunk) / total

    return source


def gradient(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source) -> Vec:
    """grad of the mean loss over the source, accumulated batch by batch (fp32)."""
    total = zeros_like(params)
    for batch, w in source():
        g = torch.autograd.grad(objective.loss(model, batch) * w, params, allow_unused=True)
        for t, gi in zip(total, g):
            if gi is not None:
                t.add_(gi.float())
    all_reduce(total)
    if not all(torch.isfinite(t).all() for t in total):
        raise UnlearnError("the loss gradient is not finite (the model has diverged or the data gives NaN "
                           "losses)")
    return total


# ---------------------------------------------------------------------------------------------- solvers

@dataclass
class SolveInfo:
    iterations: int = 0
    relative_residual: float = float("nan")


def cg(matvec: Callable[[Vec], Vec], b: Vec, *, max_iter: int = 50, tol: float = 1e-6,
       info: SolveInfo | None = None) -> Vec:
    """Conjugate gradient for A x = b, A symmetric positive definite, given x -> A x."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = dot(r, r)
    b_norm = math.sqrt(float(rr)) or 1.0
    it = 0
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        pap = dot(p, ap)
        if pap <= 0:
            raise UnlearnError(f"conjugate gradient met non-positive curvature (p'Ap = {float(pap):.3g}) at "
                               f"iteration {it}: use a Gauss-Newton backend or a larger damping")
        alpha = rr / pap
        x = axpy(alpha.float(), p, x)
        r = axpy(-alpha.float(), ap, r)
        rr_new = dot(r, r)
        if math.sqrt(float(rr_new)) <= tol * b_norm:
            rr = rr_new
            break
        p = axpy((rr_new / rr).float(), p, r)
        rr = rr_new
    if info is not None:
        info.iterations, info.relative_residual = it, math.sqrt(float(rr)) / b_norm
    return x


def power_max_eig(matvec: Callable[[Vec], Vec], like: Vec, iters: int = 20, seed: int = 0) -> float:
    """Largest eigenvalue (in magnitude) of a symmetric operator by power iteration."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(t.shape, generator=gen).to(t) for t in like]
    lam = 0.0
    for _ in range(iters):
        n = norm(v) or 1.0
        v = [t / n for t in v]
        av = matvec(v)
        lam = float(dot(v, av))
        v = av
    return abs(lam)


def lissa(matvecs: Callable[[int], Callable[[Vec], Vec]], b: Vec, *, iters: int = 100, scale: float,
          damp: float = 0.0, info: SolveInfo | None = None) -> Vec:
    """LiSSA (Agarwal et al.; Koh & Liang): v_j = b + (1 - damp) v_{j-1} - A_j v_{j-1} / scale, x = v / scale.

    ``matvecs(j)`` gives the (stochastic, e.g. one batch) product of iteration j. The fixed point is
    x = (A + damp*scale I)^-1 b; it diverges unless scale > lambda_max(A)."""
    v = [t.clone() for t in b]
    b_norm = norm(b) or 1.0
    for j in range(1, iters + 1):
        av = matvecs(j)(v)
        v = [bi + (1 - damp) * vi - ai / scale for bi, vi, ai in zip(b, v, av)]
        if not math.isfinite(norm(v)) or norm(v) > 1e6 * b_norm * scale:
            raise UnlearnError(f"LiSSA diverged at iteration {j}: scale={scale:.3g} must exceed the largest "
                               "eigenvalue of the curvature (leave lissa_scale at 0 to estimate it)")
    x = [t / scale for t in v]
    if info is not None:
        info.iterations = iters
    return x


# -------------------------------------------------------------------------------------------- backends

class Curvature(Protocol):
    params: list[torch.Tensor]

    def hvp(self, v: Vec) -> Vec: ...

    def diag(self) -> Vec: ...

    def solve(self, b: Vec, damping: float | None = None) -> Vec: ...


class _Products:
    """Curvature known through products; ``solve`` by CG (default) or LiSSA over single batches."""

    def __init__(self, params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                 source: Source, *, solver: str = "cg", max_iter: int = 50, tol: float = 1e-6,
                 lissa_scale: float = 0.0, lissa_damp: float = 0.0, default_damping: float = 1e-3,
                 seed: int = 0) -> None:
        if solver not in ("cg", "lissa"):
            raise ConfigError(f"solver must be cg or lissa, got '{solver}'")
        self.params, self.model, self.objective, self.source = list(params), model, objective, source
        self.solver, self.max_iter, self.tol = solver, max_iter, tol
        self.lissa_scale, self.lissa_damp = lissa_scale, lissa_damp
        self.default_damping, self.seed = default_damping, seed
        self.info = SolveInfo()

    def batch_product(self, v: Vec, batch: Any) -> Vec:
        raise NotImplementedError

    def hvp(self, v: Vec) -> Vec:
        total = [torch.zeros_like(t) for t in v]
        with double_backward_ok():
            for batch, w in self.source():
                for t, hv in zip(total, self.batch_product(v, batch)):
                    t.add_(hv, alpha=w)
        return all_reduce(total)

    def diag(self, samples: int = 20) -> Vec:
        """Hutchinson estimate E[u * Hu], u Rademacher."""
        gen = torch.Generator().manual_seed(self.seed)
        total = zeros_like(self.params)
        for _ in range(samples):
            u = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, torch.float32)
                 for p in self.params]
            for t, ui, hu in zip(total, u, self.hvp(u)):
                t.add_(ui * hu / samples)
        return total

    def solve(self, b: Vec, damping: float | None = None) -> Vec:
        lam = self.default_damping if damping is None else damping

        def damped(v: Vec) -> Vec:
            return axpy(lam, v, self.hvp(v))

        if self.solver == "cg":
            return cg(damped, b, max_iter=self.max_iter, tol=self.tol, info=self.info)
        batches = list(self.source())
        if len(batches) > 1 and torch.distributed.is_initialized():
            raise UnlearnError("LiSSA with per-batch products is single-process; use solver cg")
        scale = self.lissa_scale or 1.5 * power_max_eig(damped, b, seed=self.seed)

        def one_batch(j: int) -> Callable[[Vec], Vec]:
            batch, _ = batches[(j - 1) % len(batches)]

            def mv(v: Vec) -> Vec:
                with double_backward_ok():
                    return axpy(lam, v, self.batch_product(v, batch))
            return mv

        return lissa(one_batch, b, iters=self.max_iter, scale=scale, damp=self.lissa_damp, info=self.info)


class Hessian(_Products):
    """Exact Hessian-vector products of the mean loss (double backward). Indefinite on LMs."""

    def batch_product(self, v: Vec, batch: Any) -> Vec:
        loss = self.objective.loss(self.model, batch)
        g = torch.autograd.grad(loss, self.params, create_graph=True)
        hv = torch.autograd.grad(g, self.params, grad_outputs=[t.to(p.dtype) for t, p in zip(v, self.params)])
        return [h.float() for h in hv]


class GaussNewton(_Products):
    """Exact GGN products J^T (d^2 L / dz^2) J v, z the logits (PSD for convex output losses)."""

    def batch_product(self, v: Vec, batch: Any) -> Vec:
        obj = self.objective
        if obj.logits is None or obj.logits_loss is None:
            raise ConfigError("this objective has no logits split: Gauss-Newton products need one")
        z = obj.logits(self.model, batch)
        u = torch.zeros_like(z, requires_grad=True)
        jtu = torch.autograd.grad(z, self.params, grad_outputs=u, create_graph=True)  # J^T u, linear in u
        jv = torch.autograd.grad(jtu, u, grad_outputs=[t.to(p.dtype) for t, p in zip(v, self.params)])[0]
        zd = z.detach().requires_grad_(True)
        gz = torch.autograd.grad(obj.logits_loss(zd, batch), zd, create_graph=True)[0]
        hjv = torch.autograd.grad(gz, zd, grad_outputs=jv)[0]
        return [t.float() for t in torch.autograd.grad(z, self.params, grad_outputs=hjv)]


class Diagonal:
    """A diagonal curvature estimate ``d`` (one tensor per parameter)."""

    def __init__(self, params: Sequence[torch.Tensor], d: Vec) -> None:
        self.params, self.d = list(params), d

    def hvp(self, v: Vec) -> Vec:
        return [di * vi for di, vi in zip(self.d, v)]

    def diag(self) -> Vec:
        return self.d

    def solve(self, b: Vec, damping: float | None = None) -> Vec:
        """Per tensor damping: 0.1 x mean of that tensor's diagonal unless given."""
        return [bi / (di + (0.1 * float(di.mean()) if damping is None else damping) + 1e-30)
                for bi, di in zip(b, self.d)]


def _sampled_grads(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, batch: Any,
                   gen: torch.Generator) -> Vec:
    if objective.logits is None or objective.sampled_loss is None:
        raise ConfigError("this objective cannot sample labels: GNB / K-FAC need logits and sampled_loss")
    s = objective.sampled_loss(objective.logits(model, batch), batch, gen)
    return [g.float() if g is not None else torch.zeros_like(p, dtype=torch.float32)
            for g, p in zip(torch.autograd.grad(s.sum(), params, allow_unused=True), params)]


def gnb_diagonal(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
                 *, samples: int = 1, seed: int = 0) -> Diagonal:
    """Gauss-Newton-Bartlett: with labels sampled from the model, E[(sum_i grad s_i)^2] = sum_i diag GGN_i
    (cross terms have zero mean), so sum_b w_b/|b| (grad sum_{i in b} s_i)^2 estimates diag GGN of the mean
    loss without per-example gradients."""
    gen = torch.Generator().manual_seed(seed)
    d = zeros_like(params)
    for batch, w in source():
        for _ in range(samples):
            for di, g in zip(d, _sampled_grads(params, model, objective, batch, gen)):
                di.add_(g * g, alpha=w / (len(batch) * samples))
    return Diagonal(params, all_reduce(d))


def empirical_fisher_diagonal(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                              source: Source) -> Diagonal:
    """mean_i grad l_i (.)^2 with the true labels, by a per-example loop (first-order only)."""
    d = zeros_like(params)
    for batch, w in source():
        for i in range(len(batch)):
            g = torch.autograd.grad(objective.loss(model, batch[i:i + 1]), params, allow_unused=True)
            for di, gi in zip(d, g):
                if gi is not None:
                    di.add_(gi.float() ** 2, alpha=w / len(batch))
    return Diagonal(params, all_reduce(d))


def hutchinson_diagonal(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                        source: Source, *, samples: int = 20, seed: int = 0) -> Diagonal:
    return Diagonal(params, Hessian(params, model, objective, source, seed=seed).diag(samples))


@dataclass
class _Factors:
    module: torch.nn.Linear
    param_index: int
    with_bias: int  # index of the bias in params, or -1
    a_cov: torch.Tensor
    s_cov: torch.Tensor
    tokens: float = 0.0
    qa: torch.Tensor | None = None
    qs: torch.Tensor | None = None
    lam: torch.Tensor | None = None  # [out, in(+1)] eigenvalues in the Kronecker eigenbasis


class KFAC:
    """K-FAC / EK-FAC over the scoped ``nn.Linear`` weights: G ~ S (x) A, A = E[a a^T] over tokens,
    S = mean over examples of sum_t g g^T (sampled labels). With ``eigen_correct`` the eigenvalues are
    refitted as E[(Q_S^T DW_i Q_A)^2] from per-example gradients (EK-FAC). Solve:
    (G + lambda I)^-1 DW = Q_S [(Q_S^T DW Q_A) / (Lambda + lambda)] Q_A^T, lambda = 0.1 mean(Lambda)
    per layer unless given. Scoped parameters outside such layers (norms, embeddings, tied or too-large
    layers) use the GNB diagonal."""

    def __init__(self, params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                 source: Source, *, eigen_correct: bool = False, max_dim: int = 8192, seed: int = 0) -> None:
        self.params = list(params)
        index = {id(p): i for i, p in enumerate(self.params)}
        tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        self.layers: list[_Factors] = []
        for m in model.modules():
            if not isinstance(m, torch.nn.Linear) or id(m.weight) not in index or id(m.weight) in tied:
                continue
            if max(m.in_features, m.out_features) > max_dim:
                continue
            bias = index.get(id(m.bias), -1) if m.bias is not None else -1
            d_in = m.in_features + (bias >= 0)
            dev = m.weight.device
            self.layers.append(_Factors(m, index[id(m.weight)], bias, torch.zeros(d_in, d_in, device=dev),
                                        torch.zeros(m.out_features, m.out_features, device=dev)))
        covered = {f.param_index for f in self.layers} | {f.with_bias for f in self.layers}
        self.rest = [i for i in range(len(self.params)) if i not in covered]
        self.gen = torch.Generator().manual_seed(seed)
        self._fit(model, objective, source, eigen_correct)

    def _acts(self, f: _Factors, a: torch.Tensor) -> torch.Tensor:
        a = a.float()
        return torch.cat([a, torch.ones_like(a[..., :1])], -1) if f.with_bias >= 0 else a

    def _fit(self, model: torch.nn.Module, objective: Objective, source: Source, eigen_correct: bool) -> None:
        captured: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

        def hook(idx: int) -> Callable[..., None]:
            def fwd(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                grads: list[torch.Tensor] = []
                captured[idx] = (inp[0].detach(), grads)
                if out.requires_grad:
                    out.register_hook(lambda g: grads.append(g.detach()))
            return fwd

        handles = [f.module.register_forward_hook(hook(k)) for k, f in enumerate(self.layers)]
        diag = zeros_like([self.params[i] for i in self.rest])
        rest_params = [self.params[i] for i in self.rest]
        try:
            for phase in ("factors", "eigen") if eigen_correct else ("factors",):
                if phase == "eigen":
                    for f in self.layers:
                        f.lam = torch.zeros(f.s_cov.shape[0], f.a_cov.shape[0], device=f.s_cov.device)
                for batch, w in source():
                    captured.clear()
                    grads = _sampled_grads(self.params, model, objective, batch, self.gen)
                    mask = objective.token_mask(batch) if objective.token_mask is not None else None
                    for k, f in enumerate(self.layers):
                        a, gl = captured[k]
                        a = self._acts(f, a)
                        g = gl[0].float() if gl else torch.zeros(*a.shape[:-1], f.s_cov.shape[0])
                        if mask is not None and a.dim() == 3:
                            a, g = a * mask[..., None], g * mask[..., None]
                        if phase == "factors":
                            f.a_cov += torch.einsum("...i,...j->ij", a, a)
                            f.tokens += float(mask.sum()) if mask is not None else a[..., 0].numel()
                            f.s_cov += torch.einsum("...i,...j->ij", g, g) * (w / len(batch))
                        else:
                            assert f.qa is not None and f.qs is not None and f.lam is not None
                            ga = (g @ f.qs, a @ f.qa)  # rotate per token, then per-example outer sums
                            dw = (torch.einsum("bto,bti->boi", *ga) if a.dim() == 3
                                  else ga[0][:, :, None] * ga[1][:, None])
                            f.lam += (dw ** 2).sum(0) * (w / len(batch))
                    if phase == "factors":
                        for di, i in zip(diag, self.rest):
                            di.add_(grads[i] ** 2, alpha=w / len(batch))
                if phase == "factors":
                    for f in self.layers:
                        all_reduce([f.a_cov, f.s_cov])
                        tokens = torch.tensor([f.tokens])
                        f.tokens = float(all_reduce([tokens])[0])
                        f.a_cov /= max(f.tokens, 1.0)
                        ea, f.qa = torch.linalg.eigh(f.a_cov.double())
                        es, f.qs = torch.linalg.eigh(f.s_cov.double())
                        f.qa, f.qs = f.qa.float(), f.qs.float()
                        f.lam = (es.clamp(min=0)[:, None] * ea.clamp(min=0)[None, :]).float()
                else:
                    all_reduce([f.lam for f in self.layers if f.lam is not None])
        finally:
            for h in handles:
                h.remove()
        self.rest_diag = Diagonal(rest_params, all_reduce(diag))

    def _weight(self, f: _Factors, v: Vec) -> torch.Tensor:
        w = v[f.param_index]
        return torch.cat([w, v[f.with_bias][:, None]], 1) if f.with_bias >= 0 else w

    @staticmethod
    def _put(out: Vec, f: _Factors, r: torch.Tensor) -> None:
        """Write a layer's [out, in(+1)] block back as its weight (and bias) entries."""
        if f.with_bias >= 0:
            out[f.param_index], out[f.with_bias] = r[:, :-1].contiguous(), r[:, -1].contiguous()
        else:
            out[f.param_index] = r

    def _apply(self, v: Vec, fn: Callable[[_Factors, torch.Tensor], torch.Tensor], rest: Vec) -> Vec:
        out = [torch.zeros_like(t) for t in v]
        for f in self.layers:
            assert f.qa is not None and f.qs is not None
            self._put(out, f, f.qs @ fn(f, f.qs.T @ self._weight(f, v) @ f.qa) @ f.qa.T)
        for i, t in zip(self.rest, rest):
            out[i] = t
        return out

    def hvp(self, v: Vec) -> Vec:
        return self._apply(v, lambda f, x: x * f.lam, self.rest_diag.hvp([v[i] for i in self.rest]))

    def solve(self, b: Vec, damping: float | None = None) -> Vec:
        def inv(f: _Factors, x: torch.Tensor) -> torch.Tensor:
            assert f.lam is not None
            lam = 0.1 * float(f.lam.mean()) if damping is None else damping
            return x / (f.lam + lam + 1e-30)

        return self._apply(b, inv, self.rest_diag.solve([b[i] for i in self.rest], damping))

    def diag(self) -> Vec:
        out = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        for f in self.layers:
            assert f.qa is not None and f.qs is not None and f.lam is not None
            self._put(out, f, (f.qs ** 2) @ f.lam @ (f.qa ** 2).T)
        for i, t in zip(self.rest, self.rest_diag.d):
            out[i] = t
        return out


class Dense:
    """The full matrix, built column by column from products: only for tiny scopes (tests, references)."""

    def __init__(self, products: _Products, max_params: int = 20_000) -> None:
        self.params = products.params
        sizes = [p.numel() for p in self.params]
        if sum(sizes) > max_params:
            raise ConfigError(f"dense curvature needs a scope of at most {max_params} parameters, "
                              f"this one has {sum(sizes)}")
        self.shapes = [p.shape for p in self.params]
        cols = []
        for j in range(sum(sizes)):
            e = torch.zeros(sum(sizes))
            e[j] = 1.0
            cols.append(self._flat(products.hvp(self._split(e))))
        self.matrix = torch.stack(cols, 1)
        self.matrix = 0.5 * (self.matrix + self.matrix.T)
        self.default_damping = products.default_damping

    def _flat(self, v: Vec) -> torch.Tensor:
        return torch.cat([t.reshape(-1).float().cpu() for t in v])

    def _split(self, flat: torch.Tensor) -> Vec:
        out, i = [], 0
        for p, s in zip(self.params, self.shapes):
            out.append(flat[i:i + p.numel()].reshape(s).to(p.device, torch.float32))
            i += p.numel()
        return out

    def hvp(self, v: Vec) -> Vec:
        return self._split(self.matrix @ self._flat(v))

    def diag(self) -> Vec:
        return self._split(self.matrix.diagonal().clone())

    def solve(self, b: Vec, damping: float | None = None) -> Vec:
        lam = self.default_damping if damping is None else damping
        a = self.matrix.double() + lam * torch.eye(self.matrix.shape[0], dtype=torch.float64)
        return self._split(torch.linalg.solve(a, self._flat(b).double()).float())


# Builders ``(params, model, objective, source, opts) -> Curvature``. Flags: ``first_order`` (gradients
# only: runs under ZeRO-3 / FSDP), ``double_backward`` (exact products through second derivatives).
CURVATURES: Registry[Callable[..., Curvature]] = Registry("curvature backend")


@dataclass(frozen=True)
class CurvatureOptions:
    solver: str = "cg"
    max_iter: int = 50
    tol: float = 1e-6
    lissa_scale: float = 0.0
    lissa_damp: float = 0.0
    samples: int = 1
    seed: int = 0

    def products(self) -> JsonObject:
        return dict(solver=self.solver, max_iter=self.max_iter, tol=self.tol, lissa_scale=self.lissa_scale,
                    lissa_damp=self.lissa_damp, seed=self.seed)


@CURVATURES.register("hessian", first_order=False, double_backward=True)
def _hessian(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
             o: CurvatureOptions) -> Curvature:
    return Hessian(params, model, objective, source, **o.products())


@CURVATURES.register("ggn", first_order=False, double_backward=True)
def _ggn(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
         o: CurvatureOptions) -> Curvature:
    return GaussNewton(params, model, objective, source, **o.products())


@CURVATURES.register("dense", first_order=False, double_backward=True)
def _dense(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
           o: CurvatureOptions) -> Curvature:
    return Dense(Hessian(params, model, objective, source, **o.products()))


@CURVATURES.register("dense_ggn", first_order=False, double_backward=True)
def _dense_ggn(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
               o: CurvatureOptions) -> Curvature:
    return Dense(GaussNewton(params, model, objective, source, **o.products()))


@CURVATURES.register("gnb", first_order=True, double_backward=False)
def _gnb(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
         o: CurvatureOptions) -> Curvature:
    return gnb_diagonal(params, model, objective, source, samples=o.samples, seed=o.seed)


@CURVATURES.register("fisher", first_order=True, double_backward=False)
def _fisher(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
            o: CurvatureOptions) -> Curvature:
    return empirical_fisher_diagonal(params, model, objective, source)


@CURVATURES.register("hutchinson", first_order=False, double_backward=True)
def _hutchinson(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
                o: CurvatureOptions) -> Curvature:
    return hutchinson_diagonal(params, model, objective, source, samples=max(o.samples, 10), seed=o.seed)


@CURVATURES.register("kfac", first_order=True, double_backward=False)
def _kfac(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
          o: CurvatureOptions) -> Curvature:
    return KFAC(params, model, objective, source, eigen_correct=False, seed=o.seed)


@CURVATURES.register("ekfac", first_order=True, double_backward=False)
def _ekfac(params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective, source: Source,
           o: CurvatureOptions) -> Curvature:
    return KFAC(params, model, objective, source, eigen_correct=True, seed=o.seed)


BACKENDS = tuple(CURVATURES.names())
FIRST_ORDER_BACKENDS = tuple(CURVATURES.names(first_order=True))


def build_curvature(backend: str, params: Sequence[torch.Tensor], model: torch.nn.Module, objective: Objective,
                    source: Source, *, solver: str = "cg", max_iter: int = 50, tol: float = 1e-6,
                    lissa_scale: float = 0.0, lissa_damp: float = 0.0, samples: int = 1,
                    seed: int = 0) -> Curvature:
    """One curvature backend by name (see ``CURVATURES``)."""
    opts = CurvatureOptions(solver, max_iter, tol, lissa_scale, lissa_damp, samples, seed)
    return CURVATURES.get(backend)(params, model, objective, source, opts)


def needs_double_backward(backend: str) -> bool:
    return bool(CURVATURES.entry(backend).info["double_backward"])


def sampled_token_ce(logits: torch.Tensor, labels: torch.Tensor, row_seeds: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Sophia-G's loss: mean CE of labels sampled from the model over labelled positions, and their count.

    Row i draws its labels by inverse CDF from uniforms seeded with ``row_seeds[i]``: seeding by the row's
    place in the global batch makes the sample the same whichever process holds the row."""
    mask = labels[:, 1:] != -100
    z = logits[:, :-1].float()
    with torch.no_grad():
        cdf = torch.softmax(z.detach(), -1).cumsum(-1)
        u = torch.stack([torch.rand(z.shape[1], generator=torch.Generator().manual_seed(int(s)))
                         for s in row_seeds]).to(z.device)
        y = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None].contiguous())[..., 0].clamp(max=z.shape[-1] - 1)
    return F.cross_entropy(z[mask], y[mask]), int(mask.sum())
