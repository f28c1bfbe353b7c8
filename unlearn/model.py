"""Model I/O: load a Hugging Face causal LM (a local directory or a hub id through the HF cache), save
atomically to a new directory.

Saving writes into a temporary sibling directory and renames it into place, so a crash leaves
nothing at the destination; only safetensors are written, with a manifest of sha256 hashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn.config import LoadOptions
from unlearn.data import PromptFormat, parse_format, set_format
from unlearn.ensemble import quiet_loading as _quiet_loading
from unlearn.errors import ModelError
from unlearn.fsutil import WEIGHT_SUFFIXES, fsync_dir, fsync_tree, sha256_file, temp_sibling, weights_hash
from unlearn.jsonio import JsonObject

MANIFEST = "unlearn_manifest.json"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(spec: str | Path) -> bool:
    """``org/name`` or ``org/name@revision`` that is not an existing local path."""
    return isinstance(spec, str) and bool(_HUB_ID.match(spec)) and not Path(spec).exists()


def resolve_model(spec: str | Path) -> Path:
    """A local model directory as it is, or a Hugging Face hub id (``org/name[@revision]``) resolved through
    the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``): taken from the cache when there, downloaded when
    online, and with ``HF_HUB_OFFLINE=1`` never fetched (a one-line error names the id and the cache)."""
    if not is_hub_id(spec):
        return Path(spec)
    from huggingface_hub import constants, snapshot_download

    repo, _, revision = str(spec).partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=_HUB_FILES))
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE is set: nothing is downloaded)" if constants.HF_HUB_OFFLINE else ""
        raise ModelError(f"{spec}: not found in the Hugging Face cache {constants.HF_HUB_CACHE}{offline} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _check_dir(path: str | Path) -> Path:
    p = resolve_model(path)
    if not p.exists():
        raise ModelError(f"model directory not found: {path}")
    if not p.is_dir():
        raise ModelError(f"not a model directory: {path}")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise ModelError(f"{path}: no config.json (nor adapter_config.json), not a Hugging Face model directory")
    if not any(f.suffix == ".safetensors" for f in p.iterdir()):
        raise ModelError(f"{path}: no *.safetensors weights (only safetensors are loaded)")
    return p


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    p = resolve_model(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, options: LoadOptions | None = None, *, dtype: torch.dtype = torch.float32,
               attn_implementation: str | None = None, trust_remote_code: bool = False, template: Any = None,
               adapter: str | Path | None = None) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` from a local directory or hub id in eval mode; weights via safetensors only.
    ``template``: the prompt format of QA records (``unlearn.data.parse_format``: plain, chat, a format string
    or yaml file, or a ``PromptFormat``); a warning when the tokenizer has a chat template and plain is used.
    ``adapter``: a LoRA adapter directory applied on top (``path`` may itself be an adapter directory: its
    base is the one it names). ``options`` (``LoadOptions``) replaces dtype, template and trust_remote_code and
    adds the device."""
    from transformers import AutoModelForCausalLM

    from unlearn import lora

    if options is not None:
        dtype, template, trust_remote_code = options.torch_dtype(), options.template, options.trust_remote_code

    resolved = resolve_model(path)
    from unlearn import ensemble

    if ensemble.is_sharded(resolved):  # deletion-ready training: the members served as one causal LM
        model = ensemble.load_sharded(resolved, dtype)
        tok = load_tokenizer(resolved, trust_remote_code=False)
        if options is not None and options.device:
            model.to(options.device)
        set_format(tok, template if isinstance(template, PromptFormat) else parse_format(template))
        return model, tok
    if adapter is None and lora.is_adapter_dir(resolved):
        adapter, path = resolved, lora.base_of(resolved)
    p = _check_dir(path)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "use_safetensors": True,
                              "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    model.eval()
    own_tokenizer = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
    tok = load_tokenizer(adapter if own_tokenizer else p, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
    if adapter is not None:
        model = lora.load(model, adapter, base_path=p)
    if options is not None and options.device:
        model.to(options.device)
    fmt = template if isinstance(template, PromptFormat) else parse_format(template)
    set_format(tok, fmt)
    if fmt.kind == "plain" and getattr(tok, "chat_template", None):
        warnings.warn(f"{path}: the tokenizer has a chat template but QA records are scored in the plain "
                      "'Question: ... Answer:' format; pass --template chat if the model was trained on chats",
                      stacklevel=2)
    return model, tok




def model_hash(path: str | Path) -> str:
    """Hash of a model directory's weights, computed from the files (not from the manifest); of a sharded
    model, over its members' hashes."""
    from unlearn import ensemble

    if ensemble.is_sharded(path):
        return ensemble.sharded_hash(path)
    p = _check_dir(path)
    return weights_hash({f.name: sha256_file(f) for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES})


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_output(out: Path, input_dir: str | Path | None) -> None:
    """A new output directory that is neither the input model, inside it, nor around it."""
    if input_dir is not None and (_same_or_inside(out, Path(input_dir)) or _same_or_inside(Path(input_dir), out)):
        raise ModelError(f"refusing to write {out}: it is (or contains) the input model {input_dir}")
    if out.exists():
        raise ModelError(f"output directory already exists: {out} (choose a new --out; nothing is overwritten)")


def write_model_files(model: torch.nn.Module, tokenizer: Any, directory: Path,
                      extra_files: dict[str, str] | None = None) -> JsonObject:
    """Weights (safetensors only), tokenizer, ``extra_files`` and the manifest of sha256 hashes into
    ``directory``, each file fsynced; returns the manifest."""
    with _quiet_loading():
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text, encoding="utf-8")
    for f in directory.iterdir():
        if f.suffix in (".bin", ".pt", ".pth", ".pkl"):
            f.unlink()  # safetensors only
    files = {f.name: sha256_file(f) for f in sorted(directory.iterdir()) if f.is_file()}
    manifest = {"files": files, "weights_sha256": weights_hash(files)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    fsync_tree(directory)
    return manifest


def save_model(model: torch.nn.Module, tokenizer: Any, out: str | Path, *, input_dir: str | Path | None = None,
               extra_files: dict[str, str] | None = None,
               before_commit: Callable[[Path], None] | None = None) -> JsonObject:
    """Write model + tokenizer to a NEW directory ``out`` atomically (no ledger); returns the manifest.

    ``extra_files`` maps file names to text written beside the weights. ``before_commit`` runs on the
    temporary directory just before the rename (tests use it to simulate a crash mid-write).
    """
    out = Path(out)
    check_output(out, input_dir)
    tmp = temp_sibling(out)
    try:
        manifest = write_model_files(model, tokenizer, tmp, extra_files)
        if before_commit is not None:
            before_commit(tmp)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@dataclass(frozen=True)
class ModelInfo:
    path: str
    architecture: str
    parameters: int
    trainable: int
    layers: int | None
    hidden_size: int | None
    vocab_size: int
    tokenizer: str
    tokenizer_vocab: int
    dtype: str
    max_position: int | None
    weights_sha256: str


def model_info(path: str | Path) -> ModelInfo:
    model, tok = load_model(path)
    cfg = model.config
    return ModelInfo(
        path=str(path), architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        layers=getattr(cfg, "num_hidden_layers", None), hidden_size=getattr(cfg, "hidden_size", None),
        vocab_size=int(cfg.vocab_size), tokenizer=type(tok).__name__, tokenizer_vocab=len(tok),
        dtype=str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or next(model.parameters()).dtype),
        max_position=getattr(cfg, "max_position_embeddings", None), weights_sha256=model_hash(path))


def check_same_tokenizer(tok_a: Any, tok_b: Any, name_a: str, name_b: str) -> None:
    """Raise when two tokenizers would give different ids (e.g. a reference model of another family)."""
    if tok_a.get_vocab() != tok_b.get_vocab():
        raise ModelError(f"tokenizer mismatch: {name_b} does not use the tokenizer of {name_a} "
                         f"(vocab {len(tok_b)} vs {len(tok_a)}); scores would compare different token ids")
