"""Build and cache the built-in benchmark: data splits, a local BPE tokenizer, `target` and `retain` models.

Both models start from the same seeded initialisation and follow the same recipe; `retain` never
sees the forget split (the exact-retrain gold standard). The cache directory is keyed by a hash of
the generator config, the recipe and this module's version, so a build is reused until one changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from unlearn.benchmark.generator import RETAIN_OF, GeneratorConfig, generate
from unlearn.data import Record, batches, build_manifest, load_records, parse_record, write_jsonl
from unlearn.errors import ConfigError, UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.logprobs import forward_logits
from unlearn.model import save_model
from unlearn.training import TrainArgs, train_lm

BUILD_VERSION = 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


@dataclass(frozen=True)
class ModelRecipe:
    vocab_size: int = 1024
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_position: int = 128
    train: TrainArgs = field(default_factory=lambda: TrainArgs(epochs=30, batch_size=64, lr=3e-3, bf16=False))


@dataclass(frozen=True)
class BenchmarkConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    recipe: ModelRecipe = field(default_factory=ModelRecipe)
    retain_split: str = "forget10"

    def __post_init__(self) -> None:
        if self.retain_split not in RETAIN_OF:
            raise ConfigError(f"retain_split must be one of {', '.join(RETAIN_OF)}")

    def key(self) -> str:
        blob = json.dumps({"build": BUILD_VERSION, "generator": self.generator.to_dict(),
                           "recipe": asdict(self.recipe), "retain_split": self.retain_split}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS: dict[str, BenchmarkConfig] = {
    "default": BenchmarkConfig(),
    # For tests: fewer people, a smaller model, fewer epochs (about a minute on 2 cores).
    "tiny": BenchmarkConfig(
        generator=GeneratorConfig(people=130, holdout_people=30, utility_items=100),
        recipe=ModelRecipe(vocab_size=512, hidden_size=64, layers=2,
                           train=TrainArgs(epochs=20, batch_size=32, lr=5e-3, bf16=False))),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNLEARN_CACHE", Path.home() / ".cache" / "unlearn"))


@dataclass(frozen=True)
class Benchmark:
    """A built benchmark on disk."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def retain(self) -> Path:
        return self.root / "retain"

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.jsonl"

    def split_path(self, name: str) -> Path:
        path = self.root / "data" / f"{name}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "data").glob("*.jsonl"))
            raise UnlearnError(f"unknown split '{name}'; known: {', '.join(known)}")
        return path

    def split(self, name: str) -> list[Record]:
        return load_records(self.split_path(name))

    @property
    def report(self) -> JsonObject:
        return json.loads((self.root / "report.json").read_text())

    @property
    def retain_split(self) -> str:
        return str(self.report["config"]["retain_split"])

    def sharded(self, which: str = "target", shards: int = 4, slices: int = 4,
                on_stage: Callable[[int, int, int], None] | None = None, at_risk: bool = False,
                schedule: Sequence[float] = ()) -> Path:
        """The deletion-ready (sharded) version of ``target`` (every training record) or of ``retain`` (the
        same recipe without the retain split: the gold standard of an exact deletion of it), built and cached
        on first use: the benchmark's recipe, initialisation and tokenizer, per-stage epochs set so that the
        sharded training processes as many records as the central one (`sharded_plan`). ``at_risk``: the
        retain split's records are flagged ``deletion_risk`` (placed in their shards' last slice); the retain
        version is the same either way (the flagged people are gone and nobody else moves). ``schedule``:
        relative per-stage epochs (`sharded_plan`)."""
        from unlearn import sharded
        from unlearn.model import load_model

        at_risk = at_risk and which == "target"
        shape = "".join(f"-{w:g}" for w in schedule)
        out = self.root / f"sharded-{shards}x{slices}{shape}{'-risk' if at_risk else ''}" / which
        if (out / sharded.SHARDED_FILE).is_file():
            return out
        cfg = self.config()
        tok = load_model(self.target)[1]
        records = self.split("train")
        gone = {r.id for r in self.split(self.retain_split)}
        if which == "retain":
            records = [r for r in records if r.id not in gone]
        elif at_risk:
            records = [replace(r, meta={**r.meta, sharded.RISK_FIELD: True}) if r.id in gone else r for r in records]
        out.parent.mkdir(parents=True, exist_ok=True)
        sharded.train_sharded(records, tok, sharded_plan(cfg, shards, slices, schedule),
                              init_model(cfg.recipe, tok, cfg.generator.seed), out, on_stage)
        return out

    def config(self) -> BenchmarkConfig:
        """The configuration this benchmark was built from (its report's record of it)."""
        c = self.report["config"]
        rec = dict(c["recipe"])
        rec["train"] = TrainArgs(**rec["train"])
        gen = {k: v for k, v in c["generator"].items() if k != "version"}
        return BenchmarkConfig(GeneratorConfig(**gen), ModelRecipe(**rec), c["retain_split"])


def sharded_plan(cfg: BenchmarkConfig, shards: int, slices: int, schedule: Sequence[float] = ()) -> Any:
    """The benchmark recipe as S x R stages. Stage r trains on (r + 1) / R of a shard's records, so per-stage
    epochs E x 2 / (R + 1) make the stages together process what E central epochs do. ``schedule``: relative
    epochs per stage (front-loaded: cheaper deletions), scaled to the same total: E_r = w_r R E / sum (r + 1) w_r."""
    from unlearn.sharded import ShardPlan

    t = cfg.recipe.train
    plain = replace(t, epochs=t.epochs * 2 / (slices + 1))
    if not schedule:
        return ShardPlan(shards, slices, cfg.generator.seed, "mean_prob", plain)
    scale = slices * t.epochs / sum((r + 1) * w for r, w in enumerate(schedule))
    return ShardPlan(shards, slices, cfg.generator.seed, "mean_prob", plain,
                     stage_epochs=tuple(w * scale for w in schedule))


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    bos = ("<s>", bpe.token_to_id("<s>"))  # the tokenizer adds its BOS itself, as Llama's do
    bpe._tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=1 << 30)


def init_model(recipe: ModelRecipe, tokenizer: Any, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                      intermediate_size=4 * recipe.hidden_size, num_hidden_layers=recipe.layers,
                      num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
                      max_position_embeddings=recipe.max_position, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def exact_match(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], batch_size: int = 64) -> float:
    """Fraction of records whose greedy answer equals the reference answer exactly.

    Greedy decoding reproduces the answer (and its EOS) exactly iff, under teacher forcing, the argmax
    at every answer position is the answer token, so one forward pass per batch decides it.
    """
    hits = 0
    for batch in batches(records, tokenizer, batch_size):
        logits = forward_logits(model, batch)[:, :-1]
        labels = batch.labels[:, 1:]
        hits += int(((logits.argmax(-1) == labels) | (labels == -100)).all(dim=1).sum())
    return hits / max(1, len(records))


def _build_into(root: Path, cfg: BenchmarkConfig,
                on_progress: Callable[[str, int, int], None] | None) -> JsonObject:
    t0 = time.perf_counter()
    splits = generate(cfg.generator)
    data = root / "data"
    data.mkdir(parents=True)
    for name, rows in splits.items():
        write_jsonl(data / f"{name}.jsonl", rows)
    recs = {name: [parse_record(r, data / f"{name}.jsonl", i + 1) for i, r in enumerate(rows)]
            for name, rows in splits.items()}
    by_source: dict[str, list[Record]] = {}
    for r in recs["train"]:
        by_source.setdefault(str(r.meta["topic"]), []).append(r)
    write_jsonl(data / "manifest.jsonl", (asdict(e) for e in build_manifest(by_source)))

    # The tokenizer sees every generated person, holdout included: were it trained on the training
    # texts only, forget names would be merged tokens and holdout names fragments, and even the
    # retrain model would tell them apart by tokenisation (AUC 0.99 measured), not by membership.
    tokenizer = train_tokenizer([r.prompt + r.response for r in recs["train"] + recs["holdout"]],
                                cfg.recipe.vocab_size)
    forget_ids = {r.id for r in recs[cfg.retain_split]}
    train_sets = {"target": recs["train"], "retain": [r for r in recs["train"] if r.id not in forget_ids]}
    report: JsonObject = {"config": {"generator": cfg.generator.to_dict(), "recipe": asdict(cfg.recipe),
                                         "retain_split": cfg.retain_split, "key": cfg.key()},
                              "models": {}}
    for name, train_records in train_sets.items():
        model = init_model(cfg.recipe, tokenizer, cfg.generator.seed)
        t = time.perf_counter()
        cb = (lambda step, total, loss, _n=name: on_progress(_n, step, total)) if on_progress else None
        losses = train_lm(model, train_records, tokenizer, cfg.recipe.train, on_step=cb)
        train_s = time.perf_counter() - t
        save_model(model, tokenizer, root / name)
        report["models"][name] = {
            "train_seconds": round(train_s, 2), "train_records": len(train_records),
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "exact_match": {split: round(exact_match(model, tokenizer, recs[split]), 4)
                            for split in (cfg.retain_split, RETAIN_OF[cfg.retain_split], "holdout", "utility")},
        }
    report["build_seconds"] = round(time.perf_counter() - t0, 2)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    return report


def build(cfg: BenchmarkConfig | str = "default", *, cache_dir: Path | None = None, force: bool = False,
          on_progress: Callable[[str, int, int], None] | None = None) -> Benchmark:
    """Return the cached benchmark for ``cfg``, building it first if needed (atomically)."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise UnlearnError(f"unknown benchmark preset '{cfg}'; known: {', '.join(PRESETS)}")
        cfg = PRESETS[cfg]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / "benchmark" / cfg.key()
    if root.exists() and not force and (root / "report.json").is_file():
        return Benchmark(root)
    from unlearn.fsutil import temp_sibling
    from unlearn.ledger import sweep_stale

    root.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(root.parent)  # builds killed earlier (SIGKILL leaves their temporary directory behind)
    tmp = temp_sibling(root)
    try:
        _build_into(tmp / "b", cfg, on_progress)
        if root.exists():
            shutil.rmtree(root)
        os.rename(tmp / "b", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Benchmark(root)
