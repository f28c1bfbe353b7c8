"""The first vectorised transcendental of a process is exact once unlearn's core is imported (unlearn.numerics)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FIRST_COS = """
import torch
import unlearn.data  # the core: what every path that computes imports first
pos = torch.arange(41).expand(4, 41)
inv = 1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
emb = torch.cat([pos[..., None].float() * inv] * 2, -1)  # a rotary embedding's angles, as in a forward pass
first, later = emb.cos(), emb.cos()
err = (first.double() - emb.double().cos()).abs().max().item()
print(torch.equal(first, later), err)
"""


@pytest.mark.slow
def test_the_first_cos_of_a_process_equals_every_later_one() -> None:
    """Without the warm-up, 4 of 40 fresh processes got a first cos off by 1.5e-4, and this test failed in 1 of 3
    runs (it can only catch the fault when it happens); with it, 0 of 40 processes."""
    # one after another: run side by side on a busy machine, the fault did not show even without the warm-up
    results = [subprocess.run([sys.executable, "-c", FIRST_COS], capture_output=True, text=True, timeout=120,
                              check=True).stdout.split() for _ in range(12)]
    assert all(r[0] == "True" and float(r[1]) < 1e-6 for r in results), results
