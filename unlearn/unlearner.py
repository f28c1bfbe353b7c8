"""The unlearner interface: the shared argument dataclass, the result type, the method registry.

Methods live in ``unlearn.methods`` (importing it registers them); this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unlearn.config import LORA_ALPHA, LORA_TARGETS, RELEARN_LR, RELEARN_STEPS, Checked, arg
from unlearn.jsonio import JsonObject
from unlearn.registry import Registry


@dataclass
class UnlearnArgs(Checked):
    """Arguments every unlearner shares (first-order loop, scope, stopping rule). The defaults are the
    shipped ones (measured on the built-in forget10 split); method classes override their own."""

    lr: float = arg(1e-4, "learning rate", gt=0)
    max_steps: int = arg(200, "upper bound on optimiser steps", ge=1)
    batch_size: int = arg(16, "forget examples per step (global, all processes)", ge=1)
    retain_batch_size: int = arg(16, "retain examples per step (global)", ge=1)
    optimizer: str = arg("adamw", "adamw or sgd", choices=("adamw", "sgd"))
    weight_decay: float = arg(0.0, "decoupled weight decay", ge=0)
    grad_clip: float = arg(1.0, "max global grad norm; 0 = off", ge=0)
    scope: str = arg("all", "parameters to change: all, last:N, regex:PATTERN, or lora (a LoRA adapter: a new one "
                     "with lora_rank / lora_alpha / lora_targets, or the input adapter's own)")
    gradient_checkpointing: bool = arg(False, "recompute activations in the backward pass (less memory, ~30% "
                                       "more time)")
    lora_rank: int = arg(8, "rank of a new LoRA adapter (scope lora)", ge=1)
    lora_alpha: float = arg(LORA_ALPHA, "LoRA scaling numerator (the update is alpha / rank x B A)", gt=0)
    lora_targets: str = arg(LORA_TARGETS, "module names a new LoRA adapter wraps (comma-separated)")
    seed: int = arg(0, "seed of every random choice", ge=0)
    eval_every: int = arg(5, "steps between stopping-rule checks; 0 = never", ge=0)
    quick_check: int = arg(48, "a check's subsample stages score quick_check / 2, then quick_check records per "
                           "set before the full check (run only when neither decides); 0 = always full", ge=0)
    eval_schedule: str = arg("fixed", "fixed: check every eval_every steps; adaptive: every eval_every steps "
                             "near the target, up to 8x sparser while far from it (fewer scoring passes)",
                             choices=("fixed", "adaptive"))
    stop_alpha: float = arg(0.05, "level of the stopping rule's tests of forget vs the calibration holdout over "
                            "every one-pass score (significance both ways, and the equivalence it stops on)", gt=0,
                            lt=1)
    margin: float | None = arg(None, "equivalence margin (AUC) the stopping rule stops inside; default: from the "
                               "data, as the receipt's verdict (at most 0.10 for 10 or more people)", gt=0, le=0.5)
    max_utility_drop: float = arg(0.25, "stop early if retain utility falls below (1 - this) x its value "
                                  "before unlearning", gt=0, le=1)
    resolution_patience: int = arg(3, "where REMOVED is out of reach for the request's size (one score's interval "
                                    "alone is wider than the margin), stop after this many full checks none closer "
                                    "than the closest INCONCLUSIVE one, backing off to it (resolution_limit); 0: go "
                                    "on to REMOVED or max_steps", ge=0)
    relearn_probe: bool = arg(False, "before it stops on REMOVED, the stopping rule fine-tunes a copy on half the "
                              "monitored people for relearn_steps and stops only if the other half is still "
                              "REMOVED (a method stops on what survives relearning, not only on what looks gone)")
    relearn_steps: int = arg(RELEARN_STEPS, "optimiser steps of the relearning probe (the battery's attack's)", ge=1)
    relearn_lr: float = arg(RELEARN_LR, "learning rate of the relearning probe", gt=0)
    relearn_rho: float = arg(0.0, "sharpness-aware unlearning against relearning: each step's loss is taken after "
                             "one relearning step on the forget batch as long as this many of the relearning "
                             "attack's steps (relearn_lr x sqrt(trainable parameters) each); 0 = off, and off for a "
                             "forget set of one person", ge=0)
    robustify_alpha: float = arg(0.0, "after the method, UNDO's robustification: shrink-and-perturb the weights "
                                 "toward a random init by this much, then distil the unlearned model back in on "
                                 "retain data (0 = off)", ge=0, lt=1)
    robustify_steps: int = arg(500, "most distillation steps of the robustification", ge=1)
    robustify_lr: float = arg(1e-3, "learning rate of the robustification's distillation", gt=0)
    robustify_tolerance: float = arg(0.05, "the distillation stops when retain NLL is within this fraction of the "
                                     "unlearned model's", ge=0)

    def extra_problems(self) -> list[str]:
        from unlearn.params import check_scope

        problem = check_scope(self.scope)
        return [f"key 'scope': {problem}"] if problem else []


@dataclass
class UnlearnResult:
    model: torch.nn.Module
    steps: int
    stop_reason: str  # forget_undetectable | resolution_limit | over_unlearned | utility_drop | max_steps |
    # already_undetectable | already_over_unlearned
    stop_message: str
    wall_seconds: float = 0.0  # wall time, peak memory and its kind set by `measured` around the whole call
    peak_memory_mb: float | None = None  # see unlearn.memory: CUDA allocated above start, or process peak RSS
    memory_kind: str = "not measured"
    history: list[JsonObject] = field(default_factory=list)
    stats: JsonObject = field(default_factory=dict)


# A stopping-rule monitor: called with (model, step); returns (stop_reason or None, message, metrics). It may
# carry ``holdout``: records of people the model never saw (the stopping rule's calibration half; the receipt's
# verdict uses the other), which a method may calibrate itself on (see `unseen_records`).
Monitor = Callable[[torch.nn.Module, int], tuple[str | None, str, JsonObject]]
UnlearnFn = Callable[..., UnlearnResult]


def unseen_records(monitor: Monitor | None) -> Sequence[Any]:
    """The never-seen records a run's monitor carries (the stopping rule's calibration holdout), or none."""
    return getattr(monitor, "holdout", ())


@dataclass(frozen=True)
class Method:
    name: str
    args_cls: type[UnlearnArgs]
    run: UnlearnFn  # the registered function itself: ``run(model, tokenizer, forget, retain, args, ...)``
    summary: str


METHODS: Registry[UnlearnFn] = Registry("method")


def register(name: str, args_cls: type[UnlearnArgs], summary: str) -> Callable[[UnlearnFn], UnlearnFn]:
    """Register an unlearner under ``name``; the decorator returns the function unchanged."""
    return METHODS.register(name, args_cls=args_cls, summary=summary)


def method_entry(name: str) -> Method:
    e = METHODS.entry(name)
    return Method(e.name, e.info["args_cls"], e.obj, e.info["summary"])
