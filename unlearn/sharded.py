"""Deletion-ready training: exact deletion by construction (SISA, Bourtoule et al. 2021).

The training records are split deterministically into S shards x R slices, by person (a person's records share
one shard and one slice; records without a person are their own unit), through a keyed hash of (seed, unit). A
unit with a record flagged ``deletion_risk: true`` goes to its shard's last slice, so that deleting it retrains
only the last stage (SISA's distribution-aware placement; the flagged people are also the ones trained least).
Each shard is one model, trained in R stages from the same initial weights: stage r trains on the shard's
slices 0..r (records sorted by id, a fresh AdamW + warmup/cosine schedule, seed derived from (seed, shard,
stage)), and its weights are checkpointed. The served model averages the members' next-token probabilities
(or log-probabilities). Deleting records retrains, for each shard holding one, only the stages from the
first slice that held one, starting from the checkpoint before it, on the remaining records. Every stage is
a deterministic function of (its starting weights, its records, its seed), so the result IS the model the
recipe gives when run without the records: bitwise on the same machine and thread count.

A sharded model is a directory: ``sharded.json`` (format, plan, members, version, cost), ``assignment.json``
(record id -> [shard, slice], ids only), the tokenizer, ``init/`` (the initial weights every shard starts
from), and ``shard-NN/`` per member (a Hugging Face model directory, plus ``stages/stage-R.safetensors``
checkpoints). `load_model` loads it as one causal LM (`ShardEnsemble`). Members a deletion does not touch
are hard-linked into the new version (copied where the filesystem cannot link).

With ``ShardPlan.lora_rank`` the members are LoRA adapters on one shared base: ``init/`` is that base (a Hugging
Face model directory), each ``shard-NN/`` holds only its adapter, its start (``stages/start.safetensors``, drawn
from the seed of (seed, shard)) and its per-stage adapter checkpoints; served as an ensemble over the adapters
on one base, or as the base plus the sum / mean of their deltas (`unlearn.ensemble`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.config import LORA_ALPHA, LORA_TARGETS
from unlearn.data import Record
from unlearn.data.records import RISK_FIELD
from unlearn.distributed import all_ok, is_main_process, join_launch, on_main, rank_world
from unlearn.ensemble import (
    AGGREGATES,
    FORMAT,
    MERGED,
    SHARDED_FILE,
    ShardEnsemble,
    is_sharded,
    load_member,
    load_sharded,
    member_dir,
    quiet_loading,
    read_meta,
    sharded_hash,
)
from unlearn.errors import ConfigError, ModelError
from unlearn.jsonio import JsonObject, read_json
from unlearn.lora import is_peft
from unlearn.splits import GROUP_FIELDS
from unlearn.training import TrainArgs, train_lm

__all__ = ["RISK_FIELD", "SHARDED_FILE", "ShardEnsemble", "ShardPlan", "ShardRun", "assign", "delete", "flagged_units",
           "is_sharded", "load_sharded", "member_dir", "plan_deletion", "read_assignment", "read_meta", "sharded_hash",
           "train_sharded", "train_stages"]

ASSIGNMENT_FILE = "assignment.json"
START = Path("stages") / "start.safetensors"  # a LoRA member's adapter before its first stage


@dataclass(frozen=True)
class ShardPlan:
    """The recipe: S shards x R slices, each stage trained with ``train`` (its epochs are per stage, or
    ``stage_epochs[r]`` for stage r: front-loaded epochs make deletions, which retrain the stages from a record's
    slice on, cheaper, at the price of the late slices' records training less)."""

    shards: int = 4
    slices: int = 4
    seed: int = 0
    aggregate: str = "mean_prob"
    train: TrainArgs = field(default_factory=lambda: TrainArgs(epochs=10, batch_size=32, lr=3e-3, bf16=False))
    lora_rank: int = 0  # 0: full-parameter members; else one LoRA adapter per shard on the shared base (init/)
    lora_alpha: float = LORA_ALPHA
    lora_targets: str = LORA_TARGETS
    stage_epochs: tuple[float, ...] = ()  # () : train.epochs for every stage

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_epochs", tuple(self.stage_epochs))  # a JSON list reads back as a tuple
        problems = [f"{k} must be >= 1, got {getattr(self, k)!r}" for k in ("shards", "slices")
                    if not isinstance(getattr(self, k), int) or getattr(self, k) < 1]
        if self.aggregate not in AGGREGATES:
            problems.append(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            problems.append(f"lora_rank must be >= 0, got {self.lora_rank!r}")
        elif self.aggregate in MERGED and not self.lora_rank:
            problems.append(f"aggregate {self.aggregate} merges LoRA deltas: it needs lora_rank >= 1")
        if self.stage_epochs and (len(self.stage_epochs) != self.slices or not all(
                isinstance(e, int | float) and not isinstance(e, bool) and e > 0 for e in self.stage_epochs)):
            problems.append(f"stage_epochs must be {self.slices} positive numbers (one per slice), got "
                            f"{list(self.stage_epochs)!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def epochs(self, stage: int) -> float:
        """Stage ``stage``'s epochs."""
        return self.stage_epochs[stage] if self.stage_epochs else self.train.epochs

    def to_dict(self) -> JsonObject:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardPlan:
        return cls(**{**d, "train": TrainArgs(**d["train"])})


def unit_of(record: Record) -> str:
    """The unit a deletion request names: the record's person (or group) when it has one, else the record."""
    return next((str(record.meta[k]) for k in GROUP_FIELDS if k in record.meta), record.id)


def _draw(seed: int, *key: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, (seed, *key))).encode()).digest()[:8], "big")


def flagged_units(records: Sequence[Record]) -> set[str]:
    """The units (people) with a record flagged ``deletion_risk``."""
    return {unit_of(r) for r in records if r.meta.get(RISK_FIELD) is True}


def assign(records: Sequence[Record], plan: ShardPlan) -> dict[str, tuple[int, int]]:
    """record id -> (shard, slice), by a keyed hash of the record's unit (one person: one shard, one slice). A unit
    with a record flagged ``deletion_risk`` goes to its shard's last slice (SISA's distribution-aware placement):
    deleting it retrains only the last stage, the one that trained least on it."""
    late = flagged_units(records)

    def place(unit: str) -> tuple[int, int]:
        slice_ = plan.slices - 1 if unit in late else _draw(plan.seed, "slice", unit) % plan.slices
        return _draw(plan.seed, "shard", unit) % plan.shards, slice_

    return {r.id: place(unit_of(r)) for r in records}


def stage_records(records: Sequence[Record], assignment: Mapping[str, tuple[int, int]], shard: int,
                  stage: int) -> list[Record]:
    """What stage ``stage`` of ``shard`` trains on: the shard's records of slices 0..stage, sorted by id."""
    return sorted((r for r in records if r.id in assignment and assignment[r.id][0] == shard
                   and assignment[r.id][1] <= stage), key=lambda r: r.id)


def stage_args(plan: ShardPlan, shard: int, stage: int) -> TrainArgs:
    return dataclasses.replace(plan.train, epochs=plan.epochs(stage),
                               seed=_draw(plan.seed, "train", shard, stage) % (2**31))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a stage checkpoints: every weight, or of a LoRA member its adapter's."""
    adapter = is_peft(model)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not adapter or "lora_" in k}


def start_member(init: torch.nn.Module, plan: ShardPlan, shard: int) -> torch.nn.Module:
    """A member before its first stage: a copy of ``init``; with ``plan.lora_rank``, ``init`` with a new adapter
    drawn from the seed of (plan seed, shard)."""
    import copy

    model = copy.deepcopy(init)
    if not plan.lora_rank:
        return model
    from unlearn import lora

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_draw(plan.seed, "adapter", shard) % (2**31))
        return lora.attach(model, plan.lora_rank, plan.lora_alpha, plan.lora_targets)


def train_stages(model: torch.nn.Module, records: Sequence[Record], assignment: Mapping[str, tuple[int, int]],
                 plan: ShardPlan, shard: int, tokenizer: Any, first: int = 0,
                 on_stage: Callable[[int, int, int], None] | None = None) -> tuple[dict[int, dict], int]:
    """Stages ``first``..R-1 of ``shard`` on ``model`` (in place, holding the weights before stage ``first``):
    (the weights after every stage, and of a LoRA member at -1 its adapter before stage 0; records processed).
    A stage with no records leaves the weights."""
    states, cost = {-1: _state(model)} if first == 0 and is_peft(model) else {}, 0
    for stage in range(first, plan.slices):
        recs = stage_records(records, assignment, shard, stage)
        if recs:
            train_lm(model, recs, tokenizer, stage_args(plan, shard, stage))
            cost += stage_cost(len(recs), plan, stage)
        if on_stage is not None:
            on_stage(shard, stage, len(recs))
        states[stage] = _state(model)
    model.eval()
    return states, cost


def read_assignment(path: str | Path) -> dict[str, tuple[int, int]]:
    raw = read_json(Path(path) / ASSIGNMENT_FILE, None)
    if not isinstance(raw, dict) or not all(isinstance(v, list) and len(v) == 2 for v in raw.values()):
        raise ModelError(f"{path}: {ASSIGNMENT_FILE} must map record ids to [shard, slice]")
    return {k: (int(v[0]), int(v[1])) for k, v in raw.items()}


def stage_cost(n_records: int, plan: ShardPlan, stage: int) -> int:
    """Records processed by stage ``stage`` on ``n_records``: its steps x batch size (the unit of every cost
    ratio)."""
    steps = max(1, int(round(plan.epochs(stage) * math.ceil(n_records / plan.train.batch_size))))
    return steps * plan.train.batch_size


def load_state(model: torch.nn.Module, file: Path) -> torch.nn.Module:
    """Every weight from ``file``; of a LoRA member, every adapter weight (the frozen base stays)."""
    from safetensors.torch import load_file

    state = load_file(str(file))
    if not is_peft(model):
        model.load_state_dict(state, strict=True)
        return model
    want = set(_state(model))
    if set(state) != want:
        raise ModelError(f"{file}: not this member's adapter weights ({len(set(state) ^ want)} keys differ)")
    model.load_state_dict(state, strict=False)
    return model


def save_state(state: Mapping[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(state), str(file))


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file or directory tree) to ``dst``; copy where the filesystem cannot link."""
    if src.is_dir():
        dst.mkdir(parents=True)
        for child in src.iterdir():
            link_or_copy(child, dst / child.name)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_member(model: torch.nn.Module, states: Mapping[int, Mapping[str, torch.Tensor]], directory: Path,
                 plan: ShardPlan, keep: Path | None = None, first: int = 0) -> None:
    """A member directory: the final weights as a Hugging Face model directory, and the checkpoint after every
    stage but the last (``stages/stage-R.safetensors``); stages before ``first`` are linked from ``keep`` (the
    member's directory in the previous version)."""
    (directory / "stages").mkdir(parents=True)
    if plan.lora_rank:  # the adapter before its first stage: where a deletion from stage 0 starts
        if first and keep is not None:
            link_or_copy(keep / START, directory / START)
        else:
            save_state(states[-1], directory / START)
    with quiet_loading():
        # a member is this process's own model: transformers writes only on rank 0 once a process group
        # exists, so this instance is told it is the writer (the bytes are those of a single process)
        model.should_save_on_this_rank = lambda is_main_process: True
        try:
            model.save_pretrained(str(directory), safe_serialization=True)
        finally:
            del model.should_save_on_this_rank
    for stage in range(plan.slices - 1):
        name = Path("stages") / f"stage-{stage}.safetensors"
        if stage < first and keep is not None:
            link_or_copy(keep / name, directory / name)
        else:
            save_state(states[stage], directory / name)


@dataclass
class ShardRun:
    """What a training or a deletion did: the first stage retrained per shard, and the records processed
    (steps x batch size) next to those of training every shard from its first stage."""

    retrained: dict[int, int]
    cost: int
    full_cost: int

    @property
    def relative_cost(self) -> float:
        return self.cost / max(1, self.full_cost)


def full_cost(assignment: Mapping[str, tuple[int, int]], plan: ShardPlan) -> int:
    """Records processed by training every shard from its first stage (each stage: the shard's slices 0..r)."""
    return retrain_cost(assignment, plan, {s: 0 for s in range(plan.shards)})


def retrain_cost(assignment: Mapping[str, tuple[int, int]], plan: ShardPlan, first: Mapping[int, int]) -> int:
    """Records processed by training each shard of ``first`` from its stage there on (``assignment``: the
    records trained on), from the assignment alone: what `train_stages` reports, known to every process."""
    per_slice = Counter(assignment.values())  # (shard, slice) -> records
    sizes = ((sum(per_slice[(s, q)] for q in range(r + 1)), r) for s, f in first.items() for r in range(f, plan.slices))
    return sum(stage_cost(n, plan, r) for n, r in sizes if n)


def _write_version(tmp: Path, tokenizer: Any, plan: ShardPlan, assignment: Mapping[str, tuple[int, int]],
                   meta: JsonObject) -> None:
    from unlearn.fsutil import fsync_tree

    with quiet_loading():
        tokenizer.save_pretrained(str(tmp))
    (tmp / ASSIGNMENT_FILE).write_text(json.dumps({k: list(v) for k, v in sorted(assignment.items())}),
                                       encoding="utf-8")
    (tmp / SHARDED_FILE).write_text(json.dumps({"format": FORMAT, "plan": plan.to_dict(), **meta}, indent=2),
                                    encoding="utf-8")
    fsync_tree(tmp)


@contextlib.contextmanager
def _new_version(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out``, renamed to it when the block succeeds and removed when it fails:
    nothing half-written ever stands at ``out``. Under a launcher (several processes) the main process makes
    it and tells the others; every process writes its shards into it, and the rename waits for all of them
    (and happens only if all of them succeeded)."""
    from unlearn.fsutil import temp_sibling

    tmp = on_main(lambda: temp_sibling(out))
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        everyone = all_ok(ok)  # every process once, whether its own block succeeded or not
        problem = on_main(lambda: _finish(tmp, out, everyone))
    if problem:
        raise ModelError(f"{out}: the sharded model was not written ({problem})")


def _finish(tmp: Path, out: Path, everyone: bool) -> str:
    """Rename ``tmp`` to ``out`` when every process succeeded; otherwise, or when the rename fails, remove it.
    What went wrong, or nothing."""
    from unlearn.fsutil import fsync_dir

    problem = "" if everyone else "another process failed"
    if everyone:
        try:
            os.rename(tmp, out)
            fsync_dir(out.parent)
        except OSError as e:
            problem = str(e)
    if problem:
        shutil.rmtree(tmp, ignore_errors=True)
    return problem


def my_shards(shards: int) -> list[int]:
    """The shards this process trains: all of them in one process; under a launcher (``accelerate launch``,
    torchrun) every world-th from its rank, so with as many processes as shards, one shard per process. Each
    shard's training is the plain single-process loop: no gradient crosses processes, and the result does not
    depend on how many there are."""
    rank, world = rank_world()
    return [s for s in range(shards) if s % world == rank]


def _device(model: torch.nn.Module) -> torch.nn.Module:
    """Under a launcher on GPUs, this process's GPU; otherwise where the model is."""
    if rank_world()[1] > 1 and torch.cuda.is_available():
        return model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return model


def train_sharded(records: Sequence[Record], tokenizer: Any, plan: ShardPlan, init: torch.nn.Module, out: Path,
                  on_stage: Callable[[int, int, int], None] | None = None) -> ShardRun:
    """Train every shard from ``init`` (its weights are saved as the common start) and write the sharded model
    to the NEW directory ``out`` atomically."""
    from unlearn.model import check_output

    out = Path(out)
    check_output(out, None)
    if out.exists():
        raise ModelError(f"refusing to write {out}: it exists (outputs are always new directories)")
    assignment = assign(records, plan)
    join_launch()
    with _new_version(out) as tmp:
        if is_main_process():
            _write_init(init, tmp / "init", plan)
        for shard in my_shards(plan.shards):
            model = _device(start_member(init, plan, shard))
            states, _ = train_stages(model, records, assignment, plan, shard, tokenizer, 0, on_stage)
            write_member(model, states, member_dir(tmp, shard), plan)
        cost = full_cost(assignment, plan)  # no collective inside the block: a failed process cannot hang it
        run = ShardRun({s: 0 for s in range(plan.shards)}, cost, cost)
        if is_main_process():
            _write_version(tmp, tokenizer, plan, assignment, {"version": 1, "records": len(assignment),
                                                              "training_cost": cost, "deleted_records": 0,
                                                              "deletion_risk_units": len(flagged_units(records))})
    return run


def _write_init(init: torch.nn.Module, directory: Path, plan: ShardPlan) -> None:
    """The weights every member starts from; with LoRA members the shared base they are served on, as a Hugging
    Face model directory."""
    if not plan.lora_rank:
        directory.mkdir()
        save_state(_state(init), directory / "model.safetensors")
        return
    with quiet_loading():
        init.save_pretrained(str(directory), safe_serialization=True)


def _member_to_retrain(src: Path, plan: ShardPlan, shard: int, first: int) -> torch.nn.Module:
    """Member ``shard`` of the version at ``src`` holding its weights before stage ``first``."""
    d = member_dir(src, shard)
    if plan.lora_rank:
        from unlearn import lora

        model = lora.load(load_member(src / "init"), d)
        start = d / START
    else:
        model, start = load_member(d), src / "init" / "model.safetensors"
    return load_state(_device(model), start if first == 0 else d / "stages" / f"stage-{first - 1}.safetensors")


def plan_deletion(assignment: Mapping[str, tuple[int, int]], ids: Sequence[str]) -> dict[int, int]:
    """shard -> the first slice holding a deleted record (the stage to retrain from)."""
    out: dict[int, int] = {}
    for i in ids:
        shard, slice_ = assignment[i]
        out[shard] = min(out.get(shard, slice_), slice_)
    return out


def delete(path: str | Path, records: Sequence[Record], ids: Sequence[str], tokenizer: Any, out: Path,
           on_stage: Callable[[int, int, int], None] | None = None) -> ShardRun:
    """Exact deletion: a new version of the sharded model at ``path`` without the records ``ids``, written to
    the NEW directory ``out``. ``records``: the training data (at least every record the model holds). Each
    shard holding a deleted record is retrained from the checkpoint before its first such slice, on its
    remaining records; every other member is linked unchanged."""
    src, out = Path(path), Path(out)
    meta, assignment = read_meta(src), read_assignment(src)
    plan = ShardPlan.from_dict(meta["plan"])
    unknown = [i for i in ids if i not in assignment]
    if unknown:
        raise ModelError(f"{src}: {len(unknown)} requested id(s) are not in this sharded model (first: "
                         f"{unknown[0]!r}); already deleted, or never trained on")
    by_id = {r.id: r for r in records}
    missing = [i for i in assignment if i not in by_id]
    if missing:
        raise ModelError(f"the training data lacks {len(missing)} record(s) the sharded model holds (first: "
                         f"{missing[0]!r}): retraining needs every remaining record")
    gone = set(ids)
    remaining = {k: v for k, v in assignment.items() if k not in gone}
    kept_records = [by_id[i] for i in remaining]
    todo = plan_deletion(assignment, ids)
    join_launch()
    with _new_version(out) as tmp:
        if is_main_process():
            link_or_copy(src / "init", tmp / "init")
        for shard in my_shards(plan.shards):
            if shard not in todo:
                link_or_copy(member_dir(src, shard), member_dir(tmp, shard))
                continue
            first = todo[shard]
            model = _member_to_retrain(src, plan, shard, first)
            states, _ = train_stages(model, kept_records, remaining, plan, shard, tokenizer, first, on_stage)
            write_member(model, states, member_dir(tmp, shard), plan, keep=member_dir(src, shard), first=first)
        cost = retrain_cost(remaining, plan, todo)
        run = ShardRun(todo, cost, full_cost(remaining, plan))
        if is_main_process():
            _write_version(tmp, tokenizer, plan, remaining, {
                "version": int(meta.get("version", 1)) + 1, "records": len(remaining),
                "training_cost": run.full_cost, "deleted_records": int(meta.get("deleted_records", 0)) + len(gone),
                "last_deletion": {"shards": {str(k): v for k, v in todo.items()}, "cost": cost}})
    return run


