"""Conformance suite over every registered method, plus method-specific checks."""

from __future__ import annotations

import pytest
import torch

from unlearn.data import batches
from unlearn.errors import ConfigError, UnlearnError
from unlearn.loop import run_loop
from unlearn.methods import METHODS, get_method, load_method_args
from unlearn.model import load_model
from unlearn.training import token_nll

FIRST_ORDER = ["grad_ascent", "graddiff", "npo", "simnpo"]
LOOP_METHODS = [*FIRST_ORDER, "soul"]  # run by the shared first-order loop (SOUL: Sophia)
ALL_METHODS = [*LOOP_METHODS, "newton", "iau"]


@torch.no_grad()
def _nll(model, tok, records) -> float:
    return sum(token_nll(model, b).item() * len(b) for b in batches(records, tok, 64)) / len(records)


def _args(name: str, **kw):
    return load_method_args(name, overrides={"eval_every": 0, **kw})


@pytest.mark.parametrize("name", LOOP_METHODS)
def test_conformance_forget_rises_scope_respected_deterministic(name: str, bench) -> None:
    forget, retain = bench.split("forget10")[:40], bench.split("retain90")[:200]
    base, tok = load_model(bench.target)
    before = _nll(base, tok, forget)
    args = _args(name, max_steps=6, scope="last:1", lr=2e-3)
    results = []
    for _ in range(2):
        model, _ = load_model(bench.target)
        original = {n: p.detach().clone() for n, p in model.named_parameters()}
        res = get_method(name).run(model, tok, forget, retain, args)
        assert res.steps == 6 and res.stop_reason == "max_steps"
        for n, p in res.model.named_parameters():
            if "layers.1." in n:
                continue
            assert torch.equal(p, original[n]), f"{name} changed out-of-scope parameter {n}"
        assert any(not torch.equal(p, original[n]) for n, p in res.model.named_parameters() if "layers.1." in n)
        results.append({n: p.detach().clone() for n, p in res.model.named_parameters()})
    assert _nll(res.model, tok, forget) > before + 0.05
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])  # same seed, same weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["graddiff", "npo"])
def test_forget_likelihood_falls_retain_kept(name: str, bench) -> None:
    forget, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    f0, r0 = _nll(model, tok, forget), _nll(model, tok, retain[:300])
    res = get_method(name).run(model, tok, forget, retain, _args(name, max_steps=40, lr=2e-4))
    f1, r1 = _nll(res.model, tok, forget), _nll(res.model, tok, retain[:300])
    assert f1 > f0 + 0.4, (f0, f1, r0, r1)  # forget answers became much less likely
    # Retain answers stay likely: mean NLL below 0.25 nats (answer prob > 0.78) and rising at most a
    # third as much as on the forget set (the 64-wide tiny model entangles people; measured 3.5x for NPO).
    assert r1 < 0.25 and r1 - r0 < (f1 - f0) / 3, (f0, f1, r0, r1)


def test_nan_loss_and_empty_sets_are_clear_errors(tiny_model, tiny_tokenizer) -> None:
    from unlearn.data import qa_record

    recs = [qa_record("a", "Q?", "A.")]
    nan_step = lambda m, fb, rb: (torch.tensor(float("nan")), {})  # noqa: E731
    with pytest.raises(UnlearnError, match="loss became nan at step 1; lower lr"):
        run_loop(tiny_model, tiny_tokenizer, recs, [], _args("grad_ascent"), nan_step, uses_retain=False)
    with pytest.raises(UnlearnError, match="forget set is empty"):
        run_loop(tiny_model, tiny_tokenizer, [], recs, _args("grad_ascent"), nan_step, uses_retain=False)
    with pytest.raises(UnlearnError, match="needs a retain set"):
        get_method("graddiff").run(tiny_model, tiny_tokenizer, recs, [], _args("graddiff"))
    assert set(ALL_METHODS) <= set(METHODS)
    for name in ("newton", "iau"):
        with pytest.raises(UnlearnError, match="forget set is empty"):
            get_method(name).run(tiny_model, tiny_tokenizer, [], recs, _args(name))
        with pytest.raises(UnlearnError, match="needs a retain set"):
            get_method(name).run(tiny_model, tiny_tokenizer, recs, [], _args(name))
    with pytest.raises(ConfigError, match="key 'curvature' must be one of .*ekfac, got 'bogus'"):
        _args("newton", curvature="bogus")
    with pytest.raises(ConfigError, match="key 'hessian' must be one of gnb, hutchinson, sq_grad"):
        _args("soul", hessian="diag")


# Second-order methods on the tiny built-in model: forget NLL must rise by `rise` nats while retain NLL
# stays below 0.25 and rises at most a third as much (as for the first-order methods above).
SECOND_ORDER_CASES = [
    ("newton", {"max_steps": 5}, 0.2),
    ("newton", {"max_steps": 3, "curvature": "gnb"}, 0.2),
    ("newton", {"max_steps": 2, "curvature": "ggn", "curvature_examples": 64, "solver_iters": 10}, 0.05),
    ("iau", {"max_steps": 5}, 0.2),
    ("soul", {"max_steps": 40, "lr": 2e-4}, 0.4),
    ("soul", {"max_steps": 20, "lr": 2e-4, "loss": "npo"}, 0.3),
    ("soul", {"max_steps": 20, "lr": 2e-4, "hessian": "hutchinson", "hessian_every": 5}, 0.2),
    ("soul", {"max_steps": 20, "lr": 2e-4, "hessian": "sq_grad", "double_momentum": True}, 0.2),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,over,rise", SECOND_ORDER_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in SECOND_ORDER_CASES])
def test_second_order_methods_forget_and_keep_retain(name: str, over: dict, rise: float, bench) -> None:
    forget, retain = bench.split("forget10"), bench.split("retain90")
    model, tok = load_model(bench.target)
    f0, r0 = _nll(model, tok, forget), _nll(model, tok, retain[:300])
    res = get_method(name).run(model, tok, forget, retain, _args(name, **over))
    f1, r1 = _nll(res.model, tok, forget), _nll(res.model, tok, retain[:300])
    assert f1 > f0 + rise, (f0, f1, r0, r1)
    assert r1 < 0.25 and r1 - r0 < (f1 - f0) / 3, (f0, f1, r0, r1)
    if name == "newton":
        cert = res.stats["certificate"]
        assert cert["retain_grad_norm_after"] > 0 and cert["last_step"]["update_norm"] > 0
