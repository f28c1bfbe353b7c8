"""The quantization attack (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via quantization"):
round-to-nearest quantization of every Linear weight, then dequantization, in plain torch. Unlearning that
moved weights by less than half a quantization step is undone by the rounding."""

from __future__ import annotations

import copy

import torch


def rtn(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Asymmetric round-to-nearest quantize-dequantize of ``weight [out, in]`` with ``bits`` bits per value:
    one (scale, zero point) per output channel, or per group of ``group_size`` consecutive inputs.
    q = clamp(round(w / s) + z, 0, 2^bits - 1), w' = (q - z) s, s = (max - min) / (2^bits - 1),
    z = round(-min / s)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    w = weight.detach().float()
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if cols % g:
        raise ValueError(f"group_size {g} does not divide the input dimension {cols}")
    x = w.reshape(rows, cols // g, g)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return ((q - zero) * scale).reshape(rows, cols).to(weight.dtype)


def quantized_copy(model: torch.nn.Module, bits: int, group_size: int | None = None) -> torch.nn.Module:
    """A copy of ``model`` whose every ``nn.Linear`` weight is RTN quantize-dequantized (the input is not
    touched). Group-wise when the input dimension allows ``group_size``, per channel otherwise."""
    from unlearn.lora import is_peft, merged

    out = merged(model) if is_peft(model) else copy.deepcopy(model)  # an adapter is attacked merged, as deployed
    done: set[int] = set()
    with torch.no_grad():
        for module in out.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in done:
                done.add(id(module.weight))
                g = group_size if group_size and module.in_features % group_size == 0 else None
                module.weight.copy_(rtn(module.weight, bits, g))
    return out
