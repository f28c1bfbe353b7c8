"""The unlearner interface: argument dataclasses loaded from yaml, a registry, and the result type."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.errors import ConfigError, InputError
from unlearn.memory import PeakMemory


@dataclass
class UnlearnArgs:
    """Arguments every unlearner shares (first-order loop, scope, stopping rule)."""

    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    max_steps: int = field(default=100, metadata={"help": "upper bound on optimiser steps"})
    batch_size: int = field(default=16, metadata={"help": "forget examples per step (global, all processes)"})
    retain_batch_size: int = field(default=16, metadata={"help": "retain examples per step (global)"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or sgd"})
    weight_decay: float = 0.0
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm; 0 = off"})
    scope: str = field(default="all", metadata={"help": "parameters to change: all, last:N, regex:PATTERN"})
    seed: int = 0
    eval_every: int = field(default=10, metadata={"help": "steps between stopping-rule checks; 0 = never"})
    stop_alpha: float = field(default=0.05, metadata={
        "help": "stop once forget vs holdout is no longer detectable by LOSS (one-sided MWU p >= stop_alpha)"})
    max_utility_drop: float = field(default=0.25, metadata={
        "help": "stop early if retain utility falls below (1 - this) x its value before unlearning"})

    def __post_init__(self) -> None:
        for name in ("lr", "max_steps", "batch_size", "retain_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, got '{self.optimizer}'")
        if not 0 < self.stop_alpha < 1 or not 0 < self.max_utility_drop <= 1:
            raise ConfigError("stop_alpha must be in (0, 1) and max_utility_drop in (0, 1]")
        if self.eval_every < 0:
            raise ConfigError("eval_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UnlearnResult:
    model: torch.nn.Module
    steps: int
    stop_reason: str  # forget_undetectable | max_steps | utility_drop | converged
    stop_message: str
    wall_seconds: float = 0.0  # both set by the registry around the whole call
    peak_memory_mb: float = 0.0  # MiB above the level at the start (CUDA allocated, or CPU RSS)
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


# A stopping-rule monitor: called with (model, step); returns (stop_reason or None, message, metrics).
Monitor = Callable[[torch.nn.Module, int], tuple[str | None, str, dict[str, Any]]]


@dataclass(frozen=True)
class Method:
    name: str
    args_cls: type[UnlearnArgs]
    run: Callable[..., UnlearnResult]
    summary: str


METHODS: dict[str, Method] = {}


def register(name: str, args_cls: type[UnlearnArgs], summary: str) -> Callable[[Callable[..., UnlearnResult]],
                                                                               Callable[..., UnlearnResult]]:
    def deco(fn: Callable[..., UnlearnResult]) -> Callable[..., UnlearnResult]:
        if name in METHODS:
            raise ValueError(f"method '{name}' is already registered")

        @functools.wraps(fn)
        def measured(model: torch.nn.Module, *args: Any, **kwargs: Any) -> UnlearnResult:
            """Wall time and peak memory of the whole call (reference copies and curvature included)."""
            with PeakMemory(next(model.parameters()).device) as mem:
                start = time.perf_counter()
                result = fn(model, *args, **kwargs)
            result.wall_seconds, result.peak_memory_mb = time.perf_counter() - start, mem.peak_mb
            return result

        METHODS[name] = Method(name, args_cls, measured, summary)
        return fn

    return deco


def get_method(name: str) -> Method:
    import unlearn.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # yaml 1.1 reads 3e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{where}: key '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def build_args(cls: type[UnlearnArgs], values: Mapping[str, Any], where: str = "config") -> UnlearnArgs:
    """Typed args from a mapping; unknown keys and wrong types are errors naming the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"known: {', '.join(sorted(fields))}")
    return cls(**{k: _coerce(v, hints[k], k, where) for k, v in values.items()})


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "methods"


def load_method_args(name: str, config: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> UnlearnArgs:
    """Defaults of the dataclass <- configs/methods/NAME.yaml <- user ``config`` yaml <- ``overrides``."""
    import yaml

    method = get_method(name)
    if config is not None and not Path(config).is_file():
        raise InputError("config file not found", file=config)
    values: dict[str, Any] = {}
    for path in (CONFIG_DIR / f"{name}.yaml", Path(config) if config else None):
        if path is None or not path.is_file():
            continue
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"invalid yaml ({str(exc).splitlines()[0]})", file=path) from None
        if not isinstance(loaded, dict):
            raise InputError("expected a mapping of argument names to values", file=path)
        if loaded.get("method", name) != name:
            raise InputError(f"config is for method '{loaded['method']}', not '{name}'", file=path, field="method")
        loaded.pop("method", None)
        build_args(method.args_cls, loaded, str(path))  # validate each file on its own
        values.update(loaded)
    values.update(overrides or {})
    return build_args(method.args_cls, values, str(config or CONFIG_DIR / f"{name}.yaml"))
