"""Which training data caused this behaviour? Attribution by unlearning (UnTrac, Isonuma & Titov 2024).

UnTrac:     I(D_k -> test) = L(test; theta_T) - L(test; theta_0) after T gradient-ascent steps on D_k
            (Adam, no clipping); theta_0 restored from memory between datasets.
UnTrac-Inv: ascend the test set once; I(D_k) = L(D_k; theta'_T) - L(D_k; theta_0) on a subsample of D_k.
TracIn-CP (final checkpoint only) baseline: I(D_k) = <grad L(test), grad L(D_k)> at theta_0.
Positive scores mean D_k helped the model on the test set. L = mean over records of mean token NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearn.curvature import dot, gradient, lm_objective, lm_source
from unlearn.data import Record, subsample
from unlearn.errors import ConfigError, UnlearnError
from unlearn.logprobs import token_logprobs

ATTRIBUTION_METHODS = ("untrac", "untrac-inv", "tracin")


@dataclass(frozen=True)
class UnTracArgs:
    steps: int = 50  # T: gradient-ascent steps per dataset
    lr: float = 5e-5
    batch_size: int = 1  # the paper's batch size for UnTrac
    inv_batch_size: int = 256  # UnTrac-Inv ascends the test set in large batches
    optimizer: str = "adamw"  # adamw (weight decay 0 = Adam) or sgd
    subsample: int = 200  # records of each D_k scored by UnTrac-Inv / TracIn (0 = all)
    scope: str = "all"
    seed: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.inv_batch_size < 1:
            raise ConfigError("steps, lr, batch_size and inv_batch_size must be positive")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, got '{self.optimizer}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_loss(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], batch_size: int = 64) -> float:
    """Mean over records of the mean token NLL of their targets (the shared one-pass log-probs)."""
    lp = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments=False, hits=False)
    return -float(lp.mean_lp().mean())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Back to theta_0 from memory (bit-identical; no reload from disk)."""
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


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
    if method not in ATTRIBUTION_METHODS:
        raise ConfigError(f"unknown attribution method '{method}'; known: {', '.join(ATTRIBUTION_METHODS)}")
    theta0 = snapshot(model)
    scores: dict[str, float] = {}
    try:
        if method == "untrac":
            base = mean_loss(model, tokenizer, test, args.eval_batch_size)
            for name, records in sources.items():
                _ascend(model, tokenizer, records, args, args.batch_size)
                scores[name] = mean_loss(model, tokenizer, test, args.eval_batch_size) - base
                restore(model, theta0)
                if on_progress is not None:
                    on_progress(name)
        elif method == "untrac-inv":
            subs = {k: subsample(v, args.subsample, args.seed) for k, v in sources.items()}
            base_k = {k: mean_loss(model, tokenizer, v, args.eval_batch_size) for k, v in subs.items()}
            _ascend(model, tokenizer, test, args, min(args.inv_batch_size, len(test)))
            for name, records in subs.items():
                scores[name] = mean_loss(model, tokenizer, records, args.eval_batch_size) - base_k[name]
                if on_progress is not None:
                    on_progress(name)
        else:
            from unlearn.params import apply_scope

            params = apply_scope(model, args.scope)
            obj = lm_objective()
            g_test = gradient(params, model, obj, lm_source(test, tokenizer, args.eval_batch_size, model))
            for name, records in sources.items():
                src = lm_source(subsample(records, args.subsample, args.seed), tokenizer, args.eval_batch_size, model)
                scores[name] = float(dot(g_test, gradient(params, model, obj, src)))
                if on_progress is not None:
                    on_progress(name)
    finally:
        restore(model, theta0)
    return scores
