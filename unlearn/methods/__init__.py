"""Unlearning methods; importing this package registers the built-in ones."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unlearn.config import build_args, read_yaml_mapping, resolve_config
from unlearn.errors import InputError
from unlearn.memory import PeakMemory
from unlearn.methods import gradient, iau, newton, npo, soul, target_match  # noqa: F401  (registers them)
from unlearn.robustify import robustify
from unlearn.unlearner import METHODS, Method, UnlearnArgs, UnlearnFn, UnlearnResult, method_entry

__all__ = ["METHODS", "Method", "UnlearnArgs", "UnlearnResult", "get_method", "load_method_args", "measured"]


def get_method(name: str) -> Method:
    """The registered method ``name`` (its function, argument class and summary)."""
    return method_entry(name)


def load_method_args(name: str, config: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> UnlearnArgs:
    """The dataclass defaults (the shipped ones) <- ``config`` (a yaml file or a shipped preset name from
    configs/methods) <- ``overrides``. Every problem is reported at once, naming the file and the keys."""
    method = get_method(name)
    values: dict[str, Any] = {}
    where = f"method '{name}'"
    if config is not None:
        path = resolve_config(config, "methods")
        where = str(path)
        values = read_yaml_mapping(path)
        if values.get("method", name) != name:
            raise InputError(f"config is for method '{values['method']}', not '{name}'", file=path, field="method")
        values.pop("method", None)
    values.update(overrides or {})
    return build_args(method.args_cls, values, where)


def measured(run: UnlearnFn, model: torch.nn.Module, *args: Any, **kwargs: Any) -> UnlearnResult:
    """``run(model, tokenizer, forget, retain, method_args, ...)``, then the robustification stage when the
    arguments ask for it (``robustify_alpha`` > 0; its stats under ``stats["robustify"]``), with wall time and peak
    memory (reference copies and curvature included) written into the result."""
    with PeakMemory(next(model.parameters()).device) as mem:
        start = time.perf_counter()
        result = run(model, *args, **kwargs)
        tokenizer, _, retain, margs = args[:4]
        if margs.robustify_alpha > 0:
            stage = robustify(result.model, tokenizer, retain, margs, accelerator=kwargs.get("accelerator"))
            result.model = stage.model
            result.stats["robustify"] = {**stage.stats, "steps": stage.steps, "stop": stage.stop_reason}
    result.wall_seconds, result.peak_memory_mb, result.memory_kind = time.perf_counter() - start, mem.peak_mb, mem.kind
    return result
