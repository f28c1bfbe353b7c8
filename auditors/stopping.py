"""The stopping rule for unlearners: stop once the forget set is no longer detectable by the LOSS
score against holdout (the audit's own test), or early when retain utility drops too far."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearn.attacks.runner import score_records
from unlearn.auditors.metrics import auc, mann_whitney_p
from unlearn.data import Record
from unlearn.unlearner import Monitor, UnlearnArgs


def forget_check(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record]) -> dict[str, float]:
    """LOSS AUC and one-sided MWU p of forget vs holdout, and retain utility (mean answer probability)."""
    scored = score_records(model, tokenizer, [*forget, *holdout, *retain_eval], ["loss"])
    s = scored.scores["loss"]
    f, h, r = s[: len(forget)], s[len(forget): len(forget) + len(holdout)], s[len(forget) + len(holdout):]
    out = {"forget_auc": auc(f, h), "forget_p": mann_whitney_p(f, h), "forget_nll": float(-f.mean())}
    if len(r):
        out["retain_prob"] = float(np.exp(r).mean())
    return out


def make_monitor(tokenizer: Any, forget: Sequence[Record], holdout: Sequence[Record],
                 retain_eval: Sequence[Record], args: UnlearnArgs) -> Monitor:
    baseline: dict[str, float] = {}

    def monitor(model: torch.nn.Module, step: int) -> tuple[str | None, str, dict[str, Any]]:
        m = forget_check(model, tokenizer, forget, holdout, retain_eval)
        if not baseline:
            baseline.update(m)
        if "retain_prob" in m and m["retain_prob"] < (1 - args.max_utility_drop) * baseline["retain_prob"]:
            return ("utility_drop", f"stopped early: retain utility fell to {m['retain_prob']:.3f} from "
                    f"{baseline['retain_prob']:.3f} (more than max_utility_drop={args.max_utility_drop:.0%})", m)
        if m["forget_p"] >= args.stop_alpha:
            return ("forget_undetectable", f"forget set no longer detectable by LOSS vs holdout "
                    f"(AUC {m['forget_auc']:.3f}, one-sided p = {m['forget_p']:.3f} >= {args.stop_alpha})", m)
        return None, "", m

    return monitor
