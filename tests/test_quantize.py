"""RTN quantization against a per-element reference, and the quantization attack restoring a masked fact."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.attacks.quantize import quantized_copy, rtn


def _slow_rtn(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    out = torch.empty_like(w)
    rows, cols = w.shape
    g = group or cols
    for r in range(rows):
        for start in range(0, cols, g):
            vals = [float(v) for v in w[r, start:start + g]]
            lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
            scale = max((hi - lo) / (2**bits - 1), 1e-12)
            zero = round(-lo / scale)
            for c, v in enumerate(vals):
                q = min(max(round(v / scale) + zero, 0), 2**bits - 1)
                out[r, start + c] = (q - zero) * scale
    return out


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, None), (4, 8), (3, 4)])
def test_rtn_matches_a_per_element_reference(bits: int, group: int | None) -> None:
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(bits))
    q = rtn(w, bits, group)
    assert torch.allclose(q, _slow_rtn(w, bits, group), atol=1e-6)
    levels = {round(float(v), 5) for v in q[0, : group or 16]}
    assert len(levels) <= 2**bits
    step = (w.max() - w.min()) / (2**bits - 1)
    assert float((q - w).abs().max()) <= float(step) / 2 + 1e-6 or group is not None


@pytest.mark.slow
def test_4bit_attack_restores_a_fact_masked_by_a_small_weight_shift(bench) -> None:
    """Unlearning that only nudges weights inside their quantization bins is undone by quantizing."""
    from unlearn.data import batches
    from unlearn.model import load_model
    from unlearn.training import token_nll

    target, tok = load_model(bench.target)
    base = quantized_copy(target, 4, 32)  # a model that lives on the 4-bit grid and still knows its facts
    facts = bench.split("forget10")[:10]
    (batch,) = list(batches(facts, tok, len(facts)))

    def nll(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(token_nll(m, batch))

    masked = quantized_copy(base, 16)  # a copy; 16-bit RTN is the identity to ~1e-5 of each range
    linears = [mod for mod in masked.modules() if isinstance(mod, torch.nn.Linear)]
    masked.zero_grad()
    token_nll(masked, batch).backward()
    with torch.no_grad():  # the "unlearning": one signed step up the facts' loss, a third of a 4-bit step
        for mod in linears:
            w = mod.weight
            x = w.reshape(w.shape[0], -1, 32)
            step = ((x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)) / 15)
            w.add_((0.3 * step * torch.sign(w.grad.reshape_as(x))).reshape_as(w))
    before, hidden, attacked = nll(base), nll(masked), nll(quantized_copy(masked, 4, 32))
    assert hidden > before + 1.0, (before, hidden)  # the fact looks forgotten...
    assert attacked < before + 0.5 * (hidden - before), (before, hidden, attacked)  # ...4-bit brings it back
    assert math.isfinite(attacked)
