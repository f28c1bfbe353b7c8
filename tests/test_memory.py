"""Peak memory is measured so that it cannot miss the peak: the kernel's high-water mark on CPU."""

from __future__ import annotations

import sys

import pytest
import torch

from unlearn.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_cpu_peak_is_the_process_high_water_mark_of_the_block() -> None:
    warm = torch.ones(40_000_000)  # 160 MB touched and freed before: an RSS delta could read ~0 below
    del warm
    with PeakMemory("cpu") as pm:
        x = torch.ones(40_000_000)
        del x  # gone before the block ends: only a high-water mark sees it
    assert pm.kind == "process peak RSS" and pm.peak_mb is not None and pm.peak_mb >= 150
    with PeakMemory("cpu") as small:
        torch.ones(10)
    assert small.peak_mb is not None and small.peak_mb < pm.peak_mb  # reset at entry, not the lifetime peak
