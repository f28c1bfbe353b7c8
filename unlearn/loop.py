"""The one first-order unlearning loop, run through Accelerate (one process, DDP, DeepSpeed, FSDP).

A method supplies ``step_loss(model, forget_batch, retain_batch) -> (loss, stats)``; the loop owns
sampling, the optimiser, clipping and the stopping-rule monitor (the method registry times every call and
measures its peak memory). ``run_direct`` is the same for methods that set the weights directly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from unlearn.data import Batch, Record, collate, encode_many, pad_id_of
from unlearn.distributed import configure_deepspeed, engine, gathered_copy, make_accelerator
from unlearn.errors import UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.logprobs import max_length_of
from unlearn.params import apply_scope
from unlearn.unlearner import Monitor, UnlearnArgs, UnlearnResult

StepLoss = Callable[[torch.nn.Module, Batch, Batch | None], tuple[torch.Tensor, dict[str, float]]]
# Called before each step's loss with (model, forget_batch, retain_batch, steps_done, optimizer, accelerator).
BeforeStep = Callable[[torch.nn.Module, Batch, Batch | None, int, Any, Any], None]


def _loader(records: Sequence[Record], tokenizer: Any, global_batch: int, seed: int, accelerator: Any,
            max_length: int | None) -> DataLoader:
    encoded = encode_many(records, tokenizer, max_length)
    per_process = max(1, global_batch // accelerator.num_processes)
    if per_process * accelerator.num_processes != global_batch:
        raise UnlearnError(f"batch size {global_batch} is not divisible by {accelerator.num_processes} processes")
    gen = torch.Generator().manual_seed(seed)
    pad = pad_id_of(tokenizer)
    loader = DataLoader(encoded, batch_size=global_batch, shuffle=True, generator=gen, drop_last=False,
                        collate_fn=lambda items: collate(items, pad))
    return loader


def _cycle(loader: DataLoader, accelerator: Any) -> Iterator[Batch]:
    """Endless batches; each process takes its slice of every global batch (same order for any world size)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    while True:
        for batch in loader:
            if world > 1:
                n = len(batch)
                lo, hi = rank * n // world, (rank + 1) * n // world
                batch = batch[lo:hi]
            yield batch.to(accelerator.device)


def check_sets(forget: Sequence[Record], retain: Sequence[Record], uses_retain: bool) -> None:
    if not forget:
        raise UnlearnError("the forget set is empty: nothing to unlearn")
    if uses_retain and not retain:
        raise UnlearnError("this method needs a retain set, and it is empty")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def run_loop(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], retain: Sequence[Record],
             args: UnlearnArgs, step_loss: StepLoss, *, uses_retain: bool, monitor: Monitor | None = None,
             accelerator: Any = None, on_step: Callable[[int, int, JsonObject], None] | None = None,
             make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
             before_step: BeforeStep | None = None) -> UnlearnResult:
    """Run ``args.max_steps`` steps of ``step_loss`` (or fewer if the monitor stops it); model changed in place.

    ``make_optimizer(params)`` replaces the ``args.optimizer`` choice (e.g. Sophia); ``before_step`` lets a
    method refresh curvature from the batches of the coming step."""
    check_sets(forget, retain, uses_retain)
    acc = make_accelerator(accelerator)
    torch.manual_seed(args.seed)
    params = apply_scope(model, args.scope)
    if args.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    max_len = max_length_of(model)
    forget_it = _cycle(_loader(forget, tokenizer, args.batch_size, args.seed, acc, max_len), acc)
    retain_it = _cycle(_loader(retain, tokenizer, args.retain_batch_size, args.seed + 1, acc, max_len),
                       acc) if uses_retain else None
    if make_optimizer is not None:
        opt: torch.optim.Optimizer = make_optimizer(params)
    elif args.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=args.lr, weight_decay=args.weight_decay)
    model.to(acc.device)
    configure_deepspeed(acc, args.batch_size // acc.num_processes, args.grad_clip)
    prepared, opt = acc.prepare(model, opt)
    stopper = Stopper(monitor, args, lambda: acc.unwrap_model(prepared))
    radius = nudge_radius(acc, forget, params, args)
    if args.relearn_rho > 0:
        stopper.extra["relearn_radius"] = radius
    steps = 0
    stopped = stopper.first()
    prepared.train()
    while not stopped and steps < args.max_steps:
        fb = next(forget_it)
        rb = next(retain_it) if retain_it is not None else None
        if before_step is not None:
            before_step(prepared, fb, rb, steps, opt, acc)
        undo = relearn_nudge(acc, prepared, fb, radius) if radius > 0 else None
        loss, stats = step_loss(prepared, fb, rb)
        if not torch.isfinite(loss):
            raise UnlearnError(f"the unlearning loss became {loss.item()} at step {steps + 1}; "
                               f"lower lr (now {args.lr})")
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if undo is not None:
            undo()
        if args.grad_clip > 0 and acc.state.deepspeed_plugin is None:
            acc.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        steps += 1
        if on_step is not None:
            on_step(steps, args.max_steps, {"loss": float(loss.detach()), **stats})
        if stopper.due(steps):
            stopped = stopper.check(steps)
            prepared.train()
    stopper.last(steps)
    prepared.eval()
    model = gathered_copy(acc.unwrap_model(prepared), acc)
    for p in model.parameters():
        p.requires_grad_(True)
    return stopper.result(model, steps)


def nudge_radius(acc: Any, forget: Sequence[Record], params: Sequence[torch.nn.Parameter],
                 args: UnlearnArgs) -> float:
    """The L2 length of the relearning nudge: ``relearn_rho`` relearning-attack steps, one being
    ``relearn_lr x sqrt(trainable parameters)`` (an Adam step moves every coordinate by about its lr), so that
    one setting means the same on a model of any size or scope. 0 when the forget set is one group (person):
    what a relearning attack brings back is what relearning some of the forget people restores of the others
    (the battery's attack is skipped for one group), and for one person the nudge only drives the records below
    the never-trained level (on the built-in benchmark's one-person requests, LOSS AUC 0.21-0.27 against the
    retain model's 0.51-0.56). Refused, once before any step, where the weights are sharded (the nudge moves
    whole parameters)."""
    from unlearn.splits import group_keys

    if args.relearn_rho == 0 or len(set(group_keys(forget))) < 2:
        return 0.0
    if engine(acc) in ("deepspeed-zero3", "fsdp"):
        raise UnlearnError("relearn_rho needs whole parameters on every process (single, DDP, DeepSpeed ZeRO-1/2); "
                           f"this run is {engine(acc)}: set relearn_rho=0")
    return args.relearn_rho * args.relearn_lr * sum(p.numel() for p in params) ** 0.5


def relearn_nudge(acc: Any, model: torch.nn.Module, fb: Batch, radius: float) -> Callable[[], None]:
    """Sharpness-aware unlearning against relearning (Fan et al. 2025, "Towards LLM unlearning resilient to
    relearning attacks"): move the trainable weights one normalised relearning step, theta <- theta - r g / |g|
    with g the gradient of the forget batch's NLL (all-reduced: every process takes the same nudge), so that the
    step's loss and gradient are those of the weights after an attacker's first step toward the data; returns
    the undo, called after the backward pass and before the optimiser step."""
    from unlearn.losses import nll, sequence_logprobs

    plain = acc.unwrap_model(model)
    params = [p for p in plain.parameters() if p.requires_grad]
    lp, n, _ = sequence_logprobs(plain, fb)
    grads = [torch.zeros_like(p) if g is None else g
             for p, g in zip(params, torch.autograd.grad(nll(lp, n), params, allow_unused=True), strict=True)]
    if acc.num_processes > 1:
        for g in grads:
            torch.distributed.all_reduce(g)
            g.div_(acc.num_processes)
    scale = radius / torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).clamp(min=1e-12)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(scale.to(g.dtype) * g)

    def undo() -> None:
        with torch.no_grad():
            for p, v in zip(params, saved, strict=True):
                p.copy_(v)

    return undo


BACK_OFF = ("over_unlearned", "utility_drop", "resolution_limit")
STOPPER_STATS = ("backed_off_to", "back_off")  # what the stopper adds to a result's stats


MAX_GAP = 8  # the adaptive schedule checks at least every MAX_GAP x eval_every steps


def next_check(history: list[JsonObject], every: int) -> int:
    """The step of the next adaptive check: after half the steps the last two checks predict until the
    ``distance`` to the target (max |AUC - target| over the scores) reaches 0, rounded to a multiple of
    ``every`` and clamped to [1, MAX_GAP] of it; the gap doubles while the distance does not shrink. The
    decision depends on the monitor's numbers only (the same on every process)."""
    last = history[-1]["step"]
    if len(history) < 2 or "distance" not in history[-1] or "distance" not in history[-2]:
        return last + every
    gap = last - history[-2]["step"]
    rate = (history[-2]["distance"] - history[-1]["distance"]) / max(gap, 1)
    want = 0.5 * history[-1]["distance"] / rate if rate > 0 else 2 * gap
    return last + every * min(max(round(want / every), 1), MAX_GAP)


class Stopper:
    """Runs the stopping-rule monitor (in eval mode), keeps the history and the reason to stop, and the best
    checkpoint seen: the trainable weights at the check closest to indistinguishable (smallest ``distance``)
    with utility inside the guard, a check the monitor marks ``leaning`` (still NOT REMOVED-side beyond the
    margin) only when no other was seen. A stop for overshooting (``over_unlearned``), for utility or at the verdict's
    resolution (``resolution_limit``: past the closest check) restores it."""

    def __init__(self, monitor: Monitor | None, args: UnlearnArgs, current: Callable[[], torch.nn.Module]) -> None:
        self.monitor, self.current = monitor, current
        self.every, self.schedule = args.eval_every, args.eval_schedule
        self.history: list[JsonObject] = []
        self.reason, self.message = "max_steps", f"reached max_steps={args.max_steps}"
        self.best: tuple[int, float, list[torch.Tensor]] | None = None
        self.best_rank = (0.0, 0.0)
        self.extra: JsonObject = {}

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.current().parameters() if p.requires_grad]

    def _keep(self, step: int, metrics: JsonObject) -> None:
        params = self._trainable()
        if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 shards: no host copy of the weights to keep
            self.extra["back_off"] = "unavailable under DeepSpeed ZeRO-3"
            return
        good = metrics.get("utility_ok", True) and metrics.get("status") != "OVER-UNLEARNED"
        if not good or ("distance" not in metrics and not metrics.get("far")):
            return
        # A check closer to the target wins; among checks the monitor calls "far" (every score well above its
        # target: a quick check has no comparable distance) the latest wins, and any other check beats them; a
        # check "leaning" NOT REMOVED (a score above its target by more than the margin) beats only far ones: the
        # back-off never restores a still-remembering check while one that is not was seen.
        rank = ((0.0, float(step)) if metrics.get("far")
                else (0.5 if metrics.get("leaning") else 1.0, -float(metrics["distance"])))
        if self.best is None or rank > self.best_rank:
            self.best_rank = rank
            self.best = (step, float(metrics.get("distance", float("nan"))),
                         [p.detach().to("cpu", copy=True) for p in params])

    def due(self, step: int) -> bool:
        """Whether to check after ``step``: every ``eval_every`` steps, or (adaptive) as often only near the
        target, see `next_check`; ``2 x eval_every`` after a check the monitor marked ``defer``."""
        if not self.every or self.monitor is None:
            return False
        if self.history and self.history[-1].get("defer"):  # the monitor saw the target far off: skip one
            return step - self.history[-1]["step"] >= 2 * self.every
        if self.schedule == "fixed" or not self.history:
            return step % self.every == 0
        return step >= next_check(self.history, self.every)

    def check(self, step: int) -> bool:
        if self.monitor is None:
            return False
        model = self.current()
        model.eval()
        verdict, msg, metrics = self.monitor(model, step)
        self.history.append({"step": step, **metrics})
        self._keep(step, metrics)
        if verdict is None:
            return False
        self.reason, self.message = verdict, msg
        if verdict in BACK_OFF and self.best is not None and self.best[0] != step:
            best_step, distance, saved = self.best
            with torch.no_grad():
                for p, v in zip(self._trainable(), saved, strict=True):
                    p.copy_(v.to(p.device))
            where = (f"max |AUC - target| {distance:.3f}" if distance == distance else
                     "the latest check with every score still well above its target")
            self.message += (f"; backed off to the weights of step {best_step} ({where} on the calibration split, "
                             "utility inside the guard)")
            self.extra["backed_off_to"] = best_step
        return True

    def first(self) -> bool:
        """The check before any step: a utility failure is an error, an indistinguishable forget set a stop."""
        if not self.check(0):
            return False
        if self.reason == "utility_drop":
            raise UnlearnError(f"the retain-utility check failed before any step: {self.message}")
        if self.reason == "over_unlearned":
            self.reason = "already_over_unlearned"
            return True
        self.reason, self.message = "already_undetectable", f"nothing to do: {self.message}"
        return True

    def last(self, steps: int) -> None:
        if self.monitor is not None and (not self.history or self.history[-1]["step"] != steps):
            self.check(steps)

    def result(self, model: torch.nn.Module, steps: int, stats: JsonObject | None = None) -> UnlearnResult:
        return UnlearnResult(model, steps, self.reason, self.message, history=self.history,
                             stats={**(stats or {}), **self.extra})


def run_direct(model: torch.nn.Module, args: UnlearnArgs, update: Callable[[int], JsonObject], *,
               monitor: Monitor | None = None,
               on_step: Callable[[int, int, JsonObject], None] | None = None) -> UnlearnResult:
    """For methods that set the weights directly (Newton, IAU): ``update(step)`` applies step ``step``
    (1-based) in place and returns its stats; the monitor is checked every ``eval_every`` steps."""
    if args.relearn_rho > 0:
        raise UnlearnError("relearn_rho shapes the steps of a first-order loop; this method sets the weights "
                           "directly: set relearn_rho=0")
    stopper = Stopper(monitor, args, lambda: model)
    steps, stopped, stats = 0, stopper.first(), {}
    while not stopped and steps < args.max_steps:
        steps += 1
        stats = update(steps)
        if on_step is not None:
            on_step(steps, args.max_steps, {k: v for k, v in stats.items() if isinstance(v, float)})
        if stopper.due(steps):
            stopped = stopper.check(steps)
    stopper.last(steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return stopper.result(model, steps, stats)
