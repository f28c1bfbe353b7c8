"""Argument dataclasses: fields declared with their checks, validated all at once, built from yaml.

``arg(default, help, gt=0)`` declares a field; ``Checked.__post_init__`` checks every field (type, range,
choices, tuple length) plus the class's own cross-field rules and raises one ``ConfigError`` listing
every problem. ``build_args`` turns a yaml mapping into the dataclass, naming the file and the keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from unlearn.errors import ConfigError, InputError
from unlearn.jsonio import JsonObject, read_bytes

A = TypeVar("A", bound="Checked")


def arg(default: Any, help: str = "", *, gt: float | None = None, ge: float | None = None,
        lt: float | None = None, le: float | None = None, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field with its help text and checks (bounds for numbers, allowed values for strings)."""
    meta = {"help": help, "gt": gt, "ge": ge, "lt": lt, "le": le, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_problem(name: str, value: Any, tp: Any) -> str | None:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, tuple):
            return f"key '{name}' must be a list of {len(items)} values, got {value!r}"
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        if len(value) != len(items):
            return f"key '{name}' must have {len(items)} values, got {len(value)}"
        for v, t in zip(value, items, strict=True):
            if _type_problem(name, v, t) is not None:
                return f"key '{name}' must be a list of {getattr(t, '__name__', t)}, got {value!r}"
        return None
    ok = {float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(tp)
    if ok is not None and not ok(value):
        kind = "a finite number" if tp is float else f"{tp.__name__}"
        return f"key '{name}' must be {kind}, got {value!r}"
    return None


def _bound_problems(name: str, value: Any, meta: Mapping[str, Any]) -> list[str]:
    out = []
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for key, op, ok in (("gt", ">", lambda a, b: a > b), ("ge", ">=", lambda a, b: a >= b),
                            ("lt", "<", lambda a, b: a < b), ("le", "<=", lambda a, b: a <= b)):
            bound = meta.get(key)
            if bound is not None and not ok(v, bound):
                out.append(f"key '{name}' must be {op} {bound:g}, got {v!r}")
                break
    choices = meta.get("choices")
    if choices and isinstance(value, str) and value not in choices:
        out.append(f"key '{name}' must be one of {', '.join(choices)}, got '{value}'")
    return out


class Checked:
    """Mixin for argument dataclasses: every field checked in ``__post_init__``, all problems at once."""

    def __post_init__(self) -> None:
        problems = self.field_problems()
        if not problems:
            problems = self.extra_problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def field_problems(self) -> list[str]:
        hints = _hints(type(self))
        out: list[str] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            problem = _type_problem(f.name, value, hints[f.name])
            out += [problem] if problem else _bound_problems(f.name, value, f.metadata)
        return out

    def extra_problems(self) -> list[str]:
        """Rules across fields; subclasses extend the list."""
        return []

    def to_dict(self) -> JsonObject:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _coerce(value: Any, tp: Any) -> Any:
    """yaml -> field type: lists to tuples, ints to floats, and yaml 1.1's '3e-4' strings to floats."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        if len(items) == len(value):
            return tuple(_coerce(v, t) for v, t in zip(value, items, strict=True))
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def build_args(cls: type[A], values: Mapping[str, Any], where: str = "config") -> A:
    """Typed arguments from a mapping. Unknown keys, wrong types and out-of-range values are reported
    together in one ``ConfigError`` that names ``where`` (the file) and every bad key."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    problems = [f"unknown key '{k}' (known: {', '.join(sorted(names))})" for k in values if k not in names]
    good: dict[str, Any] = {}
    for k, v in values.items():
        if k not in names:
            continue
        v = _coerce(v, hints[k])
        problem = _type_problem(k, v, hints[k])
        if problem:
            problems.append(problem)
        else:
            good[k] = v
    try:
        obj = cls(**good)
    except ConfigError as exc:
        problems.append(str(exc))
        obj = None
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    assert obj is not None
    return obj


def _unique_key_loader() -> type:
    """yaml's SafeLoader, refusing a key given twice in one mapping (yaml keeps the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for k, _ in node.value:  # one pass: a set of the keys so far (was quadratic: 32k keys took 13 s)
                key = self.construct_object(k, deep=deep)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key (a list): yaml's own constructor refuses it below
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return Loader


def read_yaml_mapping(path: str | Path) -> JsonObject:
    """A yaml file that must hold a mapping; missing files and bad yaml are one-line input errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError("file not found", file=path)
    try:
        loaded = yaml.load(read_bytes(p).decode("utf-8"), Loader=_unique_key_loader())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise InputError(f"invalid yaml ({first})", file=path) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError("expected a mapping of argument names to values", file=path)
    return loaded


def presets_dir() -> Path:
    """The shipped presets (the repository's configs/, installed as the package data unlearn.configs)."""
    import unlearn.configs

    return Path(next(iter(unlearn.configs.__path__)))


def presets(kind: str) -> list[str]:
    """Names of the shipped presets of one kind (``methods``, ``compare``, ``accelerate``)."""
    return sorted(p.stem for p in (presets_dir() / kind).glob("*.yaml"))


def resolve_config(spec: str | Path, kind: str) -> Path:
    """A yaml file path as given, or the name of a shipped preset (``soul_vs_adamw``): the same file in
    every kind of install."""
    p = Path(spec)
    if p.is_file():
        return p
    shipped = presets_dir() / kind / f"{p.stem if p.suffix in ('.yaml', '.yml') else p.name}.yaml"
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(presets(kind)) or "none"
    raise InputError(f"config not found (not a file, nor a shipped {kind} preset: {known})", file=spec)


DTYPES = ("float32", "bfloat16", "float16", "auto")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # a new LoRA adapter wraps these
LORA_ALPHA = 16.0
RELEARN_STEPS = 20  # the relearning attack of the battery and the stopping rule's relearning probe
RELEARN_LR = 3e-4
DEFAULT_METHOD = "target_match"  # of forget, requests run and worst-case: the best of the removal table


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How every model of a workflow is loaded: the prompt format of QA records (``template``: plain, chat, a
    format string or a yaml file), the weights' dtype (``auto`` = as the checkpoint stores them), the device
    (default: where the accelerator puts it, else CPU) and whether a model's own code may run."""

    template: str | None = None
    dtype: str = "float32"
    device: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device is not None and not re.fullmatch(r"(cpu|cuda|mps|xpu|hpu|npu|mlu|meta)(:\d+)?", self.device):
            raise ConfigError(f"device must be cpu, cuda, cuda:N, mps, xpu or another torch device, got "
                              f"{self.device[:40]!r}")

    def torch_dtype(self) -> Any:
        import torch

        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
