"""A deletion-ready (sharded) model served as one causal LM: the members and their aggregate.

The directory layout and the training live in `unlearn.sharded`; this module only reads a sharded directory, so
that model loading (`unlearn.model.load_model`) can serve one without importing the training code.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from unlearn.errors import ModelError
from unlearn.fsutil import WEIGHT_SUFFIXES, sha256_file, weights_hash
from unlearn.jsonio import JsonObject, read_json

SHARDED_FILE, FORMAT = "sharded.json", "unlearn-sharded/1"
AGGREGATES = ("mean_prob", "mean_logprob", "merged_sum", "merged_mean")
MERGED = ("merged_sum", "merged_mean")  # LoRA members only: one model, base + the sum (or mean) of the deltas


class ShardEnsemble(torch.nn.Module):
    """S member causal LMs served as one: logits = log of the mean of the members' next-token probabilities
    (``mean_prob``), or the mean of their log-probabilities renormalised (``mean_logprob``, a product of
    experts). Scoring costs S forward passes; ``[B, T, V]`` log-probabilities come out as the logits."""

    def __init__(self, members: Sequence[torch.nn.Module], aggregate: str = "mean_prob") -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.aggregate = aggregate
        self.config = members[0].config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> SimpleNamespace:
        kwargs.pop("labels", None)
        logps = torch.stack([torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                                               .logits.float(), dim=-1) for m in self.members])  # [S, B, T, V]
        return SimpleNamespace(logits=self.combine(logps))

    def combine(self, logps: torch.Tensor) -> torch.Tensor:
        """The ensemble's log-probabilities from the members' (stacked on the first dimension)."""
        if self.aggregate == "mean_prob":
            return torch.logsumexp(logps, dim=0) - math.log(len(self.members))
        return torch.log_softmax(logps.mean(dim=0), dim=-1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, do_sample: bool = False, pad_token_id: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, **kwargs: Any) -> torch.Tensor:
        """Greedy decoding by the ensemble's next-token distribution (what `forward` scores), left padding as
        `transformers` generates: each member keeps its own KV cache, so a step costs S one-token passes.
        Finished rows are padded with ``pad_token_id``; returns prompt + new tokens, like ``generate``."""
        if do_sample:
            raise ValueError("a sharded model decodes greedily (do_sample=False)")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        eos = torch.tensor([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int)
                           else list(eos_token_id), device=input_ids.device)
        ids, step, positions = input_ids, input_ids, (mask.cumsum(-1) - 1).clamp(min=0)
        caches: list[Any] = [None] * len(self.members)
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logps = []
            for i, m in enumerate(self.members):
                out = m(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=caches[i],
                        use_cache=True)
                caches[i] = out.past_key_values
                logps.append(torch.log_softmax(out.logits[:, -1].float(), dim=-1))
            nxt = self.combine(torch.stack(logps)).argmax(-1)
            if pad_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= torch.isin(nxt, eos)
            if done.all():
                break
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
            step, positions = nxt[:, None], positions[:, -1:] + 1
        return ids

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.members[0].get_input_embeddings()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-tensor "Loading weights" bar from transformers while we load (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDED_FILE).is_file()


def read_meta(path: str | Path) -> JsonObject:
    meta = read_json(Path(path) / SHARDED_FILE, None)
    plan = meta.get("plan") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(plan, dict) or not (
            isinstance(plan.get("shards"), int) and plan["shards"] >= 1 and plan.get("aggregate") in AGGREGATES):
        raise ModelError(f"{path}: {SHARDED_FILE} is not a sharded model of format {FORMAT} (field 'plan')")
    return meta


def member_dir(path: Path, shard: int) -> Path:
    return Path(path) / f"shard-{shard:02d}"


def load_member(directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with quiet_loading():
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True,
                                                    use_safetensors=True).eval()


class AdapterView(torch.nn.Module):
    """One adapter of a PEFT model holding several (one per shard): that model with this adapter active. Every
    view shares the one base, so S adapter members cost one base model of memory (and S passes to score)."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name
        self.config = model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.model.set_adapter(self.name)
        return self.model(*args, **kwargs)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()


def adapter_names(shards: int) -> list[str]:
    return [f"shard-{s:02d}" for s in range(shards)]


def load_adapters(path: Path, shards: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The shared base (``init/``) with every member's LoRA adapter loaded under its `adapter_names` name."""
    from unlearn import lora

    model = lora.load(load_member(path / "init", dtype), member_dir(path, 0), adapter_name=adapter_names(1)[0])
    for s, name in enumerate(adapter_names(shards)[1:], start=1):
        model.load_adapter(str(member_dir(path, s)), adapter_name=name)
    return model.eval()


def merge_adapters(model: torch.nn.Module, names: Sequence[str], mean: bool) -> torch.nn.Module:
    """A plain model: W0 + the sum (``mean``: the mean) over ``names`` of each adapter's delta (alpha / r) B A,
    in every wrapped layer; one forward pass to serve."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                delta = sum(module.get_delta_weight(n) for n in names)
                module.base_layer.weight.add_(delta / (len(names) if mean else 1))
    return model.unload().eval()


def load_sharded(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A sharded model as one causal LM: the ensemble of its members, or (LoRA members, a merged aggregate) the
    base with the members' deltas merged."""
    plan = read_meta(path)["plan"]
    if not plan.get("lora_rank"):
        return ShardEnsemble([load_member(member_dir(Path(path), s), dtype) for s in range(plan["shards"])],
                             plan["aggregate"]).eval()
    model, names = load_adapters(Path(path), plan["shards"], dtype), adapter_names(plan["shards"])
    if plan["aggregate"] in MERGED:
        return merge_adapters(model, names, plan["aggregate"] == "merged_mean")
    return ShardEnsemble([AdapterView(model, n) for n in names], plan["aggregate"]).eval()


def sharded_hash(path: str | Path) -> str:
    """One hash for a sharded model's weights: sha256 over its members' weight hashes, in shard order."""
    h = hashlib.sha256()
    plan = read_meta(path)["plan"]
    if plan.get("lora_rank"):  # adapters: the shared base is part of the served weights
        h.update(f"base\0{sha256_file(Path(path) / 'init' / 'model.safetensors')}\n".encode())
    for s in range(plan["shards"]):
        d = member_dir(Path(path), s)
        member = weights_hash({f.name: sha256_file(f) for f in d.iterdir() if f.suffix in WEIGHT_SUFFIXES})
        h.update(f"{s}\0{member}\n".encode())
    return h.hexdigest()
