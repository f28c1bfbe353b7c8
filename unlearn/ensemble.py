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
from unlearn.jsonio import JsonObject

SHARDED_FILE, FORMAT = "sharded.json", "unlearn-sharded/1"
AGGREGATES = ("mean_prob", "mean_logprob")


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
        if self.aggregate == "mean_prob":
            out = torch.logsumexp(logps, dim=0) - math.log(len(self.members))
        else:
            out = torch.log_softmax(logps.mean(dim=0), dim=-1)
        return SimpleNamespace(logits=out)

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


def read_json(file: Path) -> Any:
    from unlearn.jsonio import parse_line, read_bytes

    return parse_line(read_bytes(file))


def read_meta(path: str | Path) -> JsonObject:
    meta = read_json(Path(path) / SHARDED_FILE)
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


def load_sharded(path: str | Path, dtype: torch.dtype = torch.float32) -> ShardEnsemble:
    plan = read_meta(path)["plan"]
    return ShardEnsemble([load_member(member_dir(Path(path), s), dtype) for s in range(plan["shards"])],
                         plan["aggregate"]).eval()


def sharded_hash(path: str | Path) -> str:
    """One hash for a sharded model's weights: sha256 over its members' weight hashes, in shard order."""
    h = hashlib.sha256()
    for s in range(read_meta(path)["plan"]["shards"]):
        d = member_dir(Path(path), s)
        member = weights_hash({f.name: sha256_file(f) for f in d.iterdir() if f.suffix in WEIGHT_SUFFIXES})
        h.update(f"{s}\0{member}\n".encode())
    return h.hexdigest()
