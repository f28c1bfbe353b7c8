"""Running under Accelerate (one process, DDP, DeepSpeed ZeRO-2/3, FSDP) and sharding work over ranks.

On machines without GPUs the process group must be gloo, and Accelerate must be told to use the CPU
(it silently runs one process otherwise); ``make_accelerator`` does both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_world()[0] == 0


def on_main(make: Callable[[], T]) -> T:
    """``make()``, run by the main process alone and its result given to every process (in one process: just
    ``make()``). When it raises there, the main process raises it and every other process raises an
    ``UnlearnError`` saying so, instead of waiting for a value that never comes."""
    if rank_world()[1] == 1:
        return make()
    import torch.distributed as dist

    from unlearn.errors import UnlearnError

    failure: BaseException | None = None
    box: list[Any] = [None]
    if is_main_process():
        try:
            box = [(True, make())]
        except Exception as e:  # told to the others, raised here below
            failure, box = e, [(False, f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if failure is not None:
        raise failure
    if not ok:
        raise UnlearnError(f"the main process failed: {value}")
    return value


def all_ok(ok: bool) -> bool:
    """Whether every process is ``ok`` (waits for all of them)."""
    if rank_world()[1] == 1:
        return ok
    import torch.distributed as dist

    flags: list[Any] = [None] * rank_world()[1]
    dist.all_gather_object(flags, ok)
    return all(flags)


def join_launch() -> None:
    """Under a launcher (``accelerate launch``, torchrun: WORLD_SIZE > 1), join its process group once
    (`make_accelerator`); nothing in one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank_world()[1] == 1:
        make_accelerator()


def make_accelerator(accelerator: Any = None) -> Any:
    """The given accelerator, or one built from the launch environment (``accelerate launch`` / torchrun)."""
    if accelerator is not None:
        return accelerator
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not cuda else []
    return Accelerator(cpu=not cuda and not deepspeed, kwargs_handlers=handlers)


def engine(acc: Any) -> str:
    """ddp | deepspeed-zero{1,2,3} | fsdp | single."""
    from accelerate.utils import DistributedType

    dt = acc.distributed_type
    if dt == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{acc.state.deepspeed_plugin.zero_stage}"
    if dt == DistributedType.FSDP:
        return "fsdp"
    return "single" if acc.num_processes == 1 else "ddp"


def configure_deepspeed(acc: Any, per_process_batch: int, grad_clip: float) -> None:
    """Fill the values a DeepSpeed config leaves to 'auto' (no dataloader is prepared) and move
    clipping into the engine, where Accelerate's clip_grad_norm_ cannot reach."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    cfg = plugin.deepspeed_config
    cfg["train_micro_batch_size_per_gpu"] = per_process_batch
    cfg["gradient_accumulation_steps"] = 1
    cfg["train_batch_size"] = per_process_batch * acc.num_processes
    cfg["gradient_clipping"] = grad_clip


def gathered_copy(model: torch.nn.Module, acc: Any) -> torch.nn.Module:
    """A plain (unsharded) copy of a ZeRO-3 / FSDP model on every rank, gathered one parameter at a time."""
    import copy

    kind = engine(acc)
    if kind not in ("deepspeed-zero3", "fsdp"):
        return model
    full: dict[str, torch.Tensor] = {}
    if kind == "deepspeed-zero3":
        import deepspeed

        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                full[name] = p.detach().to("cpu", copy=True)
    else:
        full = {k: v.full_tensor().cpu() if hasattr(v, "full_tensor") else v.cpu()
                for k, v in model.state_dict().items()}
    plain = type(model)(copy.deepcopy(model.config))
    plain.load_state_dict(full, strict=False)
    return plain.to(torch.float32).eval()


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Interleaved indices of this rank, padded (repeating its last index) so every rank has the same
    count: ranks then run the same number of batches, which ZeRO-3 collectives require."""
    mine = list(range(rank, n, world))
    size = math.ceil(n / world)
    return mine + [mine[-1] if mine else n - 1] * (size - len(mine))


def sharded(items: Sequence[T], fn: Callable[[list[T]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``fn`` over this rank's shard of ``items``, per-item arrays gathered from all ranks in input order."""
    rank, world = rank_world()
    if world == 1 or not items:
        return fn(list(items))
    import torch.distributed as dist

    idx = shard_indices(len(items), rank, world)
    local = fn([items[i] for i in idx])
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (idx, local))
    out: dict[str, np.ndarray] = {}
    for ids, arrays in parts:
        for k, v in arrays.items():
            if k not in out:
                out[k] = np.empty((len(items), *v.shape[1:]), dtype=v.dtype)
            out[k][ids] = v
    return out
