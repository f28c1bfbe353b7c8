"""A fix to torch's CPU vector math, applied once per process when the core first imports torch.

Measured here (torch 2.13 CPU wheel, MKL 2024.2, 2 threads): the first vectorised transcendental of a process
(``cos``, ``exp``, ...) on a tensor large enough to be split over threads returns values off by up to 1.5e-4 in
about 1 process of 10 (4 of 40; 0 of 30 with ``MKL_CBWR=COMPATIBLE``); every later call is exact. In a model
that first call is the rotary embedding's cos, so the first training stage of a process could differ from the
same stage run later, which broke bitwise reproducibility of training and so exact deletion (a LoRA member
differed from its recipe by up to 2e-5). One call on a one-element tensor, which runs on one thread,
initialises that math first: 0 of 40 processes then differ.
"""

from __future__ import annotations

import torch


def warm_vector_math() -> None:
    torch.ones(1).exp()


warm_vector_math()
