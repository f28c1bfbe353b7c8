"""Unlearning methods; importing this package registers the built-in ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unlearn.config import build_args, read_yaml_mapping, resolve_config
from unlearn.errors import InputError
from unlearn.methods import gradient, iau, newton, npo, soul, target_match  # noqa: F401  (registers them)
from unlearn.unlearner import METHODS, Method, UnlearnArgs, UnlearnResult, measured, method_entry

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
