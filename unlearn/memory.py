"""Peak memory of a block of work, measured so that it cannot under-report.

- CUDA: the caching allocator's peak of allocated bytes during the block (reset at entry), net of the
  bytes allocated at entry: exact.
- CPU (Linux): the kernel's high-water mark of the process's resident set (``VmHWM``), reset at entry
  through ``/proc/self/clear_refs``: the whole process's peak during the block (model, data and
  libraries included), never a sample that missed the peak or memory the allocator reused.
- Elsewhere: ``None`` ("not measured").
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import torch


def _vmhwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_vmhwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_mb`` (MiB, or None) and ``pm.kind``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.kind = "not measured"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda allocated above start"
        elif _reset_vmhwm() and _vmhwm_mb() is not None:
            self.kind = "process peak RSS"
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self.kind == "process peak RSS":
            self.peak_mb = _vmhwm_mb()
