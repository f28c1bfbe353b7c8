"""Parameter scope: which parameters an unlearner may change; in-memory snapshots of the weights."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from unlearn.errors import ConfigError

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_scope(scope: str) -> str | None:
    """What is wrong with a scope string on its own (before any model is seen), or None."""
    if scope in ("all", "lora"):
        return None
    kind, _, rest = scope.partition(":")
    if kind == "last":
        return None if rest.isdigit() and int(rest) >= 1 else f"'{scope}': expected last:N with an integer N >= 1"
    if kind == "regex":
        try:
            re.compile(rest)
        except re.error as exc:
            return f"'{scope}': bad regular expression ({exc})"
        return None
    return f"unknown scope '{scope}'; use all, last:N, regex:PATTERN or lora"


def scoped_names(model: torch.nn.Module, scope: str) -> list[str]:
    """Names of the parameters in ``scope``: ``all``, ``last:N`` (the last N transformer blocks),
    ``regex:PATTERN`` (names matching PATTERN, `re.search`) or ``lora`` (a LoRA adapter's A and B)."""
    if scope == "lora":
        from unlearn.lora import LORA_PATTERN

        scope = LORA_PATTERN
    names = [n for n, _ in model.named_parameters()]
    if scope == "all":
        chosen = names
    elif scope.startswith("last:"):
        try:
            n_last = int(scope.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"scope '{scope}': expected last:N with an integer N") from None
        blocks = sorted({int(m.group(1)) for n in names if (m := _BLOCK.search(n))})
        if not blocks or not 1 <= n_last <= len(blocks):
            raise ConfigError(f"scope '{scope}': the model has {len(blocks)} blocks")
        keep = set(blocks[-n_last:])
        chosen = [n for n in names if (m := _BLOCK.search(n)) and int(m.group(1)) in keep]
    elif scope.startswith("regex:"):
        try:
            pattern = re.compile(scope.split(":", 1)[1])
        except re.error as exc:
            raise ConfigError(f"scope '{scope}': bad regular expression ({exc})") from None
        chosen = [n for n in names if pattern.search(n)]
    else:
        raise ConfigError(f"unknown scope '{scope}'; use all, last:N, regex:PATTERN or lora")
    if not chosen:
        raise ConfigError(f"scope '{scope}' selects no parameters")
    return chosen


def apply_scope(model: torch.nn.Module, scope: str) -> list[torch.nn.Parameter]:
    """Freeze everything outside ``scope``; return the trainable parameters (model order)."""
    chosen = set(scoped_names(model, scope))
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
        if name in chosen:
            params.append(p)
    return params


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Back to theta_0 from memory (bit-identical; no reload from disk)."""
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


FINGERPRINT_SLICE = 1 << 24  # weights per float64 copy while fingerprinting (128 MiB)


def weights_fingerprint(model: torch.nn.Module) -> tuple[float, float] | None:
    """The sum and the sum of squares (float64) of every weight: two checks' weights differ in it unless nothing
    trained in between (every weight: which ones are trainable changes, e.g. a method's scope is lifted at the
    end). None for weights this process holds only a shard of (ZeRO-3)."""
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        return None
    total = squares = 0.0
    with torch.no_grad():
        for p in params:  # a float64 copy of one slice at a time, never of the model
            for part in p.detach().reshape(-1).split(FINGERPRINT_SLICE):
                x = part.double()
                total, squares = total + float(x.sum()), squares + float(x.square().sum())
    return total, squares
