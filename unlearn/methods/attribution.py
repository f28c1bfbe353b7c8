"""Which training data caused this behaviour? Attribution by unlearning (UnTrac, Isonuma & Titov 2024).

UnTrac:     I(D_k -> test) = L(test; theta_T) - L(test; theta_0) after T gradient-ascent steps on D_k
            (Adam, no clipping); theta_0 restored from memory between datasets.
UnTrac-Inv: ascend the test set once; I(D_k) = L(D_k; theta'_T) - L(D_k; theta_0) on a subsample of D_k.
TracIn-CP (final checkpoint only) baseline: I(D_k) = <grad L(test), grad L(D_k)> at theta_0.
Positive scores mean D_k helped the model on the test set. L = mean over records of mean token NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.config import Checked, arg
from unlearn.curvature import dot, gradient, lm_objective, lm_source
from unlearn.data import Record, subsample
from unlearn.errors import UnlearnError
from unlearn.logprobs import token_logprobs
from unlearn.params import apply_scope, check_scope, restore, snapshot
from unlearn.registry import Registry


@dataclass(frozen=True)
class UnTracArgs(Checked):
    steps: int = arg(50, "T: gradient-ascent steps per dataset", ge=1)
    lr: float = arg(5e-5, "ascent learning rate", gt=0)
    batch_size: int = arg(1, "ascent batch size (the paper's UnTrac: 1)", ge=1)
    inv_batch_size: int = arg(256, "UnTrac-Inv ascends the test set in large batches", ge=1)
    optimizer: str = arg("adamw", "adamw (weight decay 0 = Adam) or sgd", choices=("adamw", "sgd"))
    subsample: int = arg(200, "records of each D_k scored by UnTrac-Inv / TracIn (0 = all)", ge=0)
    scope: str = arg("all", "parameters to ascend: all, last:N, regex:PATTERN")
    seed: int = arg(0, "seed", ge=0)
    eval_batch_size: int = arg(64, "batch size of the loss evaluations", ge=1)

    def extra_problems(self) -> list[str]:
        problem = check_scope(self.scope)
        return [f"key 'scope': {problem}"] if problem else []


# ``(model, tokenizer, sources, test, args, on_progress) -> {dataset: score}``; theta_0 is restored after.
Attributor = Callable[[torch.nn.Module, Any, Mapping[str, Sequence[Record]], Sequence[Record], UnTracArgs,
                       Callable[[str], None]], dict[str, float]]
ATTRIBUTION: Registry[Attributor] = Registry("attribution method")


def mean_loss(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], batch_size: int = 64) -> float:
    """Mean over records of the mean token NLL of their targets (the shared one-pass log-probs)."""
    lp = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments=False, hits=False)
    return -float(lp.mean_lp().mean())


def _ascend(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], args: UnTracArgs,
            batch_size: int) -> None:
    from unlearn.methods import get_method, load_method_args

    ga = load_method_args("grad_ascent", overrides={
        "lr": args.lr, "max_steps": args.steps, "batch_size": batch_size, "optimizer": args.optimizer,
        "weight_decay": 0.0, "grad_clip": 0.0, "eval_every": 0, "scope": args.scope, "seed": args.seed})
    get_method("grad_ascent").run(model, tokenizer, records, [], ga)


def _check(sources: Mapping[str, Sequence[Record]], test: Sequence[Record]) -> None:
    if not sources:
        raise UnlearnError("no training datasets to attribute to")
    empty = [k for k, v in sources.items() if not v]
    if empty or not test:
        raise UnlearnError(f"empty dataset(s): {', '.join(empty) or 'the test set'}")


def attribute(model: torch.nn.Module, tokenizer: Any, sources: Mapping[str, Sequence[Record]],
              test: Sequence[Record], method: str, args: UnTracArgs,
              on_progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Influence score of each training dataset on ``test`` (higher = helped more). ``model`` is left
    bit-identical to how it came in."""
    _check(sources, test)
    fn = ATTRIBUTION.get(method)
    theta0 = snapshot(model)
    try:
        return fn(model, tokenizer, sources, test, args, on_progress or (lambda name: None))
    finally:
        restore(model, theta0)


@ATTRIBUTION.register("untrac")
def untrac(model: torch.nn.Module, tokenizer: Any, sources: Mapping[str, Sequence[Record]], test: Sequence[Record],
           args: UnTracArgs, on_progress: Callable[[str], None]) -> dict[str, float]:
    theta0 = snapshot(model)
    base = mean_loss(model, tokenizer, test, args.eval_batch_size)
    scores = {}
    for name, records in sources.items():
        _ascend(model, tokenizer, records, args, args.batch_size)
        scores[name] = mean_loss(model, tokenizer, test, args.eval_batch_size) - base
        restore(model, theta0)
        on_progress(name)
    return scores


@ATTRIBUTION.register("untrac-inv")
def untrac_inv(model: torch.nn.Module, tokenizer: Any, sources: Mapping[str, Sequence[Record]],
               test: Sequence[Record], args: UnTracArgs, on_progress: Callable[[str], None]) -> dict[str, float]:
    subs = {k: subsample(v, args.subsample, args.seed) for k, v in sources.items()}
    base_k = {k: mean_loss(model, tokenizer, v, args.eval_batch_size) for k, v in subs.items()}
    _ascend(model, tokenizer, test, args, min(args.inv_batch_size, len(test)))
    scores = {}
    for name, records in subs.items():
        scores[name] = mean_loss(model, tokenizer, records, args.eval_batch_size) - base_k[name]
        on_progress(name)
    return scores


@ATTRIBUTION.register("tracin")
def tracin(model: torch.nn.Module, tokenizer: Any, sources: Mapping[str, Sequence[Record]], test: Sequence[Record],
           args: UnTracArgs, on_progress: Callable[[str], None]) -> dict[str, float]:
    params = apply_scope(model, args.scope)
    obj = lm_objective()
    g_test = gradient(params, model, obj, lm_source(test, tokenizer, args.eval_batch_size, model))
    scores = {}
    for name, records in sources.items():
        src = lm_source(subsample(records, args.subsample, args.seed), tokenizer, args.eval_batch_size, model)
        scores[name] = float(dot(g_test, gradient(params, model, obj, src)))
        on_progress(name)
    return scores
