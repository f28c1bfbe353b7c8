"""LoRA adapters through PEFT (optional: ``pip install 'unlearn[lora]'``).

Unlearning into a new adapter (``scope: lora``) changes only the adapter's A/B matrices: the base weights
stay bit-identical and the output is a small adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``, naming its base by absolute path), removable by dropping it; ``--merge``
writes the merged model instead. An input that is itself an adapter (``--adapter DIR``, or a directory
holding ``adapter_config.json``) is loaded on its base and, with ``scope: lora``, its own parameters are
unlearned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearn.errors import ConfigError, ModelError

ADAPTER_CONFIG = "adapter_config.json"
LORA_PATTERN = r"regex:lora_[AB]\."  # the scope `lora` stands for


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA adapters need the 'peft' package: pip install 'unlearn[lora]'") from None
    return peft


def base_of(adapter: str | Path) -> str:
    """The base model an adapter directory names (``base_model_name_or_path``; relative to the adapter)."""
    from unlearn.errors import InputError
    from unlearn.jsonio import JSONProblem, read_json

    try:
        config = read_json(Path(adapter) / ADAPTER_CONFIG)
    except (InputError, JSONProblem) as exc:
        raise ModelError(f"{adapter}: unreadable {ADAPTER_CONFIG} ({exc})") from None
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if name is not None and not isinstance(name, str):
        raise ModelError(f"{adapter}: {ADAPTER_CONFIG}: base_model_name_or_path must be a string")
    if not name:
        raise ModelError(f"{adapter}: {ADAPTER_CONFIG} names no base model; pass --model BASE --adapter {adapter}")
    local = Path(adapter) / name
    return str(local) if local.exists() and not Path(name).is_absolute() else str(name)


def attach(model: torch.nn.Module, rank: int, alpha: float, targets: str, base_path: str | Path | None = None,
           init: bool = True) -> torch.nn.Module:
    """A new LoRA adapter on ``model`` (rank, alpha, comma-separated target module names); B starts at zero,
    so the wrapped model computes exactly what the base does until a step is taken (``init=False``: random
    A and B, for tests)."""
    peft = _peft()
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=[t.strip() for t in targets.split(",") if t.strip()],
                          init_lora_weights=init)
    try:
        wrapped = peft.get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(f"lora_targets '{targets}': {exc}") from None
    if base_path is not None:
        wrapped.peft_config["default"].base_model_name_or_path = str(Path(base_path).absolute())
    return wrapped


def load(model: torch.nn.Module, adapter: str | Path, base_path: str | Path | None = None,
         adapter_name: str = "default") -> torch.nn.Module:
    """``model`` with the adapter in ``adapter`` applied (its parameters trainable, the base frozen)."""
    peft = _peft()
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=True, adapter_name=adapter_name)
    except Exception as exc:
        raise ModelError(f"{adapter}: cannot load the adapter ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if base_path is not None:
        wrapped.peft_config[adapter_name].base_model_name_or_path = str(Path(base_path).absolute())
    return wrapped.eval()


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model with the adapter folded into the weights (a copy; ``model`` is unchanged)."""
    import copy

    return copy.deepcopy(model).merge_and_unload() if is_peft(model) else model
