"""Curvature backends and the Newton step against slow, obvious references: dense Hessians from
torch.autograd.functional, exact retraining of an L2-regularised logistic regression, finite differences
and the exact Gauss-Newton diagonal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from unlearn.curvature import KFAC, Dense, GaussNewton, Hessian, Objective, gnb_diagonal, gradient, lm_objective, norm
from unlearn.data import batches, qa_record
from unlearn.methods.newton import newton_direction
from unlearn.params import apply_scope

MU = 1e-2  # L2 strength: makes the logistic loss strongly convex


@dataclass
class XY:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows: slice) -> XY:
        return XY(self.x[rows], self.y[rows])


def _logistic_loss(model: torch.nn.Module, b: XY, mu: float = MU) -> torch.Tensor:
    z = model(b.x)[:, 0]
    return F.binary_cross_entropy_with_logits(z, b.y) + 0.5 * mu * sum((p ** 2).sum() for p in model.parameters())


def _objective(mu: float = MU) -> Objective:
    return Objective(loss=lambda m, b: _logistic_loss(m, b, mu), logits=lambda m, b: m(b.x),
                     logits_loss=lambda z, b: F.binary_cross_entropy_with_logits(z[:, 0], b.y))


def _source(data: XY, batch: int = 64):
    def src():
        for i in range(0, len(data), batch):
            yield data[i:i + batch], len(data[i:i + batch]) / len(data)
    return src


def _data(n: int = 400, d: int = 6, seed: int = 0) -> XY:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, generator=gen)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.3), generator=gen)
    return XY(x, y)


def _flat_loss(theta: torch.Tensor, data: XY) -> torch.Tensor:
    w, b = theta[:-1], theta[-1]
    z = data.x.double() @ w + b
    return F.binary_cross_entropy_with_logits(z, data.y.double()) + 0.5 * MU * (theta ** 2).sum()


def _exact_fit(data: XY) -> torch.Tensor:
    """The reference optimum: dense Newton iterations in float64 to machine precision."""
    theta = torch.zeros(data.x.shape[1] + 1, dtype=torch.float64)
    for _ in range(30):
        g = torch.autograd.functional.jacobian(lambda t: _flat_loss(t, data), theta)
        h = torch.autograd.functional.hessian(lambda t: _flat_loss(t, data), theta)
        theta = theta - torch.linalg.solve(h, g)
    return theta


def _model_at(theta: torch.Tensor) -> torch.nn.Module:
    model = torch.nn.Linear(theta.numel() - 1, 1)
    with torch.no_grad():
        model.weight.copy_(theta[:-1].float()[None])
        model.bias.copy_(theta[-1:].float())
    return model


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).double()


@pytest.mark.parametrize("backend", ["dense", "cg"])
def test_newton_step_matches_exact_retraining(backend: str) -> None:
    data = _data(1000)
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[[3, 50, 77]] = False  # a small request against a large set: one step is exact to second order
    retain, forget = XY(data.x[keep], data.y[keep]), XY(data.x[~keep], data.y[~keep])
    theta_full, theta_retrain = _exact_fit(data), _exact_fit(retain)
    model = _model_at(theta_full)
    params = list(model.parameters())
    prod = Hessian(params, model, _objective(), _source(retain), max_iter=100, tol=1e-10)
    curv = Dense(prod) if backend == "dense" else prod
    gap_before = float((theta_full - theta_retrain).norm() / theta_retrain.norm())
    deltas = {}
    for form in ("retain", "forget"):
        delta, _ = newton_direction(params, model, _objective(), curv, form=form, retain=_source(retain),
                                    forget=_source(forget), n_forget=len(forget), n_retain=len(retain), damping=0.0)
        deltas[form] = torch.cat([t.reshape(-1) for t in delta]).double()
        after = theta_full + deltas[form]
        rel = float((after - theta_retrain).norm() / theta_retrain.norm())
        assert rel < 1e-4 < gap_before / 10, (form, rel, gap_before)
    # At the full-data optimum the two forms are the same vector (n_f grad L_F = -n_r grad L_R).
    assert torch.allclose(deltas["retain"], deltas["forget"], rtol=1e-4, atol=1e-7)


def test_repeated_newton_steps_converge_to_retraining_for_large_requests() -> None:
    data = _data(400)
    keep = torch.arange(len(data)) % 10 != 0  # forget 10%
    retain = XY(data.x[keep], data.y[keep])
    theta_retrain = _exact_fit(retain)
    model = _model_at(_exact_fit(data))
    params = list(model.parameters())
    errors = []
    for _ in range(3):
        delta, _ = newton_direction(params, model, _objective(), Hessian(params, model, _objective(), _source(retain),
                                    max_iter=100, tol=1e-10), form="retain", retain=_source(retain), damping=0.0)
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.add_(d)
        errors.append(float((_flat(model) - theta_retrain).norm() / theta_retrain.norm()))
    assert errors[0] > 1e-4 and errors[-1] < 1e-5, errors  # quadratic convergence to the retrained optimum


def test_cg_and_lissa_match_a_dense_solve() -> None:
    data = _data(200)
    model = _model_at(_exact_fit(data) + 0.1)
    params = list(model.parameters())
    theta = _flat(model)
    h = torch.autograd.functional.hessian(lambda t: _flat_loss(t, data), theta)
    gen = torch.Generator().manual_seed(1)
    b = [torch.randn(p.shape, generator=gen) for p in params]
    lam = 0.05
    want = torch.linalg.solve(h + lam * torch.eye(len(theta), dtype=torch.float64),
                              torch.cat([t.reshape(-1) for t in b]).double())
    for solver, iters in (("cg", 50), ("lissa", 600)):
        curv = Hessian(params, model, _objective(), _source(data, 1000), solver=solver, max_iter=iters, tol=1e-9)
        got = torch.cat([t.reshape(-1) for t in curv.solve(b, lam)]).double()
        assert float((got - want).norm() / want.norm()) < 1e-4, solver
    # Dense products agree with the reference Hessian too.
    dense = Dense(Hessian(params, model, _objective(), _source(data)))
    assert torch.allclose(dense.matrix.double(), h, atol=1e-5)


def test_lissa_with_too_small_scale_is_a_clear_error() -> None:
    from unlearn.errors import UnlearnError

    data = _data(100)
    model = _model_at(_exact_fit(data))
    params = list(model.parameters())
    curv = Hessian(params, model, _objective(), _source(data, 1000), solver="lissa", max_iter=2000,
                   lissa_scale=1e-3)
    with pytest.raises(UnlearnError, match="LiSSA diverged .* must exceed the largest eigenvalue"):
        curv.solve([torch.ones_like(p) for p in params], 0.0)


def test_gauss_newton_equals_hessian_for_a_linear_model() -> None:
    data = _data(150)
    model = _model_at(_exact_fit(data))
    params = list(model.parameters())
    obj = _objective(mu=0.0)
    gen = torch.Generator().manual_seed(2)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    hv = Hessian(params, model, obj, _source(data)).hvp(v)
    gv = GaussNewton(params, model, obj, _source(data)).hvp(v)
    for a, b in zip(hv, gv):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _lm_setup(tiny_tokenizer, scope: str):
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tiny_tokenizer, seed=3)
    recs = [qa_record("a", "Where was Kalo Venra born?", "In the town of Tolmere."),
            qa_record("b", "What pet does Mira Dun keep?", "A parrot."),
            qa_record("c", "Which sport does Osta Rinel play?", "Tennis and chess.")]
    batch = next(iter(batches(recs, tiny_tokenizer, 8)))
    params = apply_scope(model, scope)
    return model, params, (lambda: iter([(batch, 1.0)]))


def test_hvp_equals_finite_differences_of_gradients(tiny_tokenizer) -> None:
    model, params, src = _lm_setup(tiny_tokenizer, "last:1")
    obj = lm_objective()
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    v = [t / norm(v) for t in v]
    hv = Hessian(params, model, obj, src).hvp(v)
    eps = 1e-2

    def grad_at(sign: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, t in zip(params, v):
                p.add_(sign * eps * t)
        g = gradient(params, model, obj, src)
        with torch.no_grad():
            for p, t in zip(params, v):
                p.sub_(sign * eps * t)
        return g

    fd = [(a - b) / (2 * eps) for a, b in zip(grad_at(1.0), grad_at(-1.0))]
    err = norm([a - b for a, b in zip(hv, fd)]) / norm(fd)
    assert err < 2e-2, err
    assert norm(hv) > 1e-3  # a real, non-zero product


def test_gnb_diagonal_matches_exact_gauss_newton_diagonal_in_expectation(tiny_tokenizer) -> None:
    model, params, src = _lm_setup(tiny_tokenizer, r"regex:layers\.1\.post_attention_layernorm|model\.norm")
    obj = lm_objective()
    exact = Dense(GaussNewton(params, model, obj, src)).diag()
    est = gnb_diagonal(params, model, obj, src, samples=400, seed=0).diag()
    e, g = torch.cat([t.reshape(-1) for t in exact]), torch.cat([t.reshape(-1) for t in est])
    assert float(e.min()) >= 0 and float(e.sum()) > 0
    assert abs(float(g.sum() / e.sum()) - 1) < 0.1, (float(g.sum()), float(e.sum()))
    assert float(torch.corrcoef(torch.stack([e, g]))[0, 1]) > 0.9


def test_kfac_algebra_matches_explicit_kronecker_products(tiny_tokenizer) -> None:
    model, params, src = _lm_setup(tiny_tokenizer, r"regex:layers\.1\.mlp\.down_proj|model\.norm")
    for eigen in (False, True):
        curv = KFAC(params, model, lm_objective(), src, eigen_correct=eigen)
        (f,) = curv.layers
        assert f.qs is not None and f.qa is not None and f.lam is not None
        # G = (Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T in row-major vec(W) order.
        q = torch.kron(f.qs.double(), f.qa.double())
        g_mat = q @ torch.diag(f.lam.double().reshape(-1)) @ q.T
        if not eigen:
            assert torch.allclose(g_mat, torch.kron(f.s_cov.double(), f.a_cov.double()), atol=1e-6)
        gen = torch.Generator().manual_seed(0)
        v = [torch.randn(p.shape, generator=gen) for p in params]
        i = f.param_index
        hv = curv.hvp(v)
        assert torch.allclose(hv[i].double().reshape(-1), g_mat @ v[i].double().reshape(-1), rtol=1e-3, atol=1e-6)
        assert torch.allclose(curv.diag()[i].double().reshape(-1), g_mat.diagonal(), rtol=1e-3, atol=1e-8)
        lam = 0.1 * float(f.lam.mean())
        x = curv.solve(v)  # default damping 0.1 mean(Lambda)
        back = g_mat @ x[i].double().reshape(-1) + lam * x[i].double().reshape(-1)
        assert torch.allclose(back, v[i].double().reshape(-1), rtol=1e-3, atol=1e-4)
        rest = [j for j in range(len(params)) if j != i]
        assert curv.rest == rest and float(curv.rest_diag.d[0].sum()) > 0  # model.norm: GNB diagonal


def _true_label_objective() -> Objective:
    """lm_objective with the observed labels in place of sampled ones (deterministic): per example
    sum_t CE_t / sqrt(T_i), so per-example gradients can be reproduced by a separate loop."""
    from unlearn.logprobs import forward_logits
    from unlearn.losses import target_logprobs

    def per_example(z: torch.Tensor, batch, gen) -> torch.Tensor:
        lp, n = target_logprobs(z, batch.labels)
        return -lp / n.sqrt()

    base = lm_objective()
    return Objective(loss=base.loss, logits=forward_logits, logits_loss=base.logits_loss, sampled_loss=per_example,
                     token_mask=base.token_mask)


def _lm_records() -> list:
    return [qa_record("a", "Where was Kalo Venra born?", "In the town of Tolmere."),
            qa_record("b", "What pet does Mira Dun keep?", "A parrot."),
            qa_record("c", "Which sport does Osta Rinel play?", "Tennis and chess."),
            qa_record("d", "Where does Mira Dun live?", "Tolmere, by the lazy fox.")]


def _lm_batches(recs, tok, batch_size: int):
    chunks = [list(batches(recs[i:i + batch_size], tok, batch_size))[0] for i in range(0, len(recs), batch_size)]
    return lambda: iter([(b, len(b) / len(recs)) for b in chunks])


def test_ekfac_eigenvalues_equal_the_per_example_gradient_refit(tiny_tokenizer) -> None:
    from tests.conftest import make_tiny_model
    from unlearn.logprobs import forward_logits

    model = make_tiny_model(tiny_tokenizer, seed=3)
    params = apply_scope(model, r"regex:layers\.1\.mlp\.down_proj")
    recs, obj = _lm_records(), _true_label_objective()
    curv = KFAC(params, model, obj, _lm_batches(recs, tiny_tokenizer, 4), eigen_correct=True)
    (f,) = curv.layers
    # slow reference: one example at a time, its own gradient DW_i, then mean_i (Q_S^T DW_i Q_A)^2
    ref = torch.zeros_like(f.lam, dtype=torch.float64)
    for rec in recs:
        (b,) = list(batches([rec], tiny_tokenizer, 1))
        (dw,) = torch.autograd.grad(obj.sampled_loss(forward_logits(model, b), b, None).sum(), params)
        ref += (f.qs.double().T @ dw.double() @ f.qa.double()) ** 2 / len(recs)
    assert float(ref.sum()) > 0
    assert torch.allclose(f.lam.double(), ref, rtol=1e-3, atol=1e-9 * float(ref.max()))
    # and the refit differs from the plain K-FAC eigenvalues (else the test would not tell them apart)
    plain = KFAC(params, model, obj, _lm_batches(recs, tiny_tokenizer, 4), eigen_correct=False).layers[0].lam
    assert not torch.allclose(plain, f.lam, rtol=1e-2)


@pytest.mark.parametrize("eigen", [False, True], ids=["kfac", "ekfac"])
def test_kfac_factors_do_not_depend_on_the_batch_size(tiny_tokenizer, eigen: bool) -> None:
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tiny_tokenizer, seed=3).double()  # factors accumulate in fp32: tolerance 1e-5
    params = apply_scope(model, r"regex:layers\.1\.mlp\.(down|up)_proj")
    recs, obj = _lm_records(), _true_label_objective()
    fits = [KFAC(params, model, obj, _lm_batches(recs, tiny_tokenizer, bs), eigen_correct=eigen) for bs in (1, 2, 4)]
    for layers in zip(*(c.layers for c in fits)):
        for other in layers[1:]:
            for name in ("a_cov", "s_cov", "lam"):
                x, y = getattr(layers[0], name).double(), getattr(other, name).double()
                assert torch.allclose(x, y, rtol=1e-4, atol=1e-5 * float(x.abs().max())), name


def test_empirical_fisher_and_hutchinson_diagonals_match_exact_ones(tiny_tokenizer) -> None:
    from unlearn.curvature import empirical_fisher_diagonal, hutchinson_diagonal

    model, params, src = _lm_setup(tiny_tokenizer, r"regex:layers\.1\.post_attention_layernorm|model\.norm")
    obj = lm_objective()
    # empirical Fisher: mean_i (grad l_i)^2 with the true labels, by a per-example loop
    (batch, _), = list(src())
    exact_f = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        grads = torch.autograd.grad(obj.loss(model, batch[i:i + 1]), params)
        for e, g in zip(exact_f, grads):
            e += g.detach() ** 2 / len(batch)
    fisher = empirical_fisher_diagonal(params, model, obj, src).diag()
    for a, b in zip(fisher, exact_f):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)
    # Hutchinson: E[u * Hu] = diag(H), against the dense Hessian's diagonal
    exact_h = torch.cat([t.reshape(-1) for t in Dense(Hessian(params, model, obj, src)).diag()])
    est = torch.cat([t.reshape(-1) for t in hutchinson_diagonal(params, model, obj, src, samples=300).diag()])
    assert float(exact_h.abs().sum()) > 0
    assert float((est - exact_h).norm() / exact_h.norm()) < 0.3
    assert float(torch.corrcoef(torch.stack([exact_h, est]))[0, 1]) > 0.9
