from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.errors import ModelError
from unlearn.model import MANIFEST, load_model, model_hash, model_info, save_model, sha256_file


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_gives_identical_logits(tiny_model_dir: Path, tiny_model, tiny_tokenizer) -> None:
    loaded, tok = load_model(tiny_model_dir)
    ids = torch.tensor([tiny_tokenizer.encode("Question: Where was Kalo Venra born?")])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert tok.get_vocab() == tiny_tokenizer.get_vocab()
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in files and MANIFEST in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_manifest_hashes_match_files(tiny_model_dir: Path) -> None:
    import json

    manifest = json.loads((tiny_model_dir / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        assert sha256_file(tiny_model_dir / name) == digest
    assert manifest["weights_sha256"] == model_hash(tiny_model_dir)


def test_failed_save_leaves_nothing_and_input_untouched(tmp_path: Path, tiny_model_dir: Path) -> None:
    before = _tree_hashes(tiny_model_dir)
    model, tok = load_model(tiny_model_dir)
    out = tmp_path / "out"

    def crash(tmp: Path) -> None:
        assert (tmp / "model.safetensors").is_file()  # the weights were already half-way written
        raise RuntimeError("simulated crash mid-write")

    with pytest.raises(RuntimeError, match="simulated crash"):
        save_model(model, tok, out, input_dir=tiny_model_dir, before_commit=crash)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert _tree_hashes(tiny_model_dir) == before


def test_refuses_to_overwrite_input_or_existing(tmp_path: Path, tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    before = _tree_hashes(tiny_model_dir)
    with pytest.raises(ModelError, match="input model"):
        save_model(model, tok, tiny_model_dir, input_dir=tiny_model_dir)
    with pytest.raises(ModelError, match="input model"):
        save_model(model, tok, tiny_model_dir / "sub", input_dir=tiny_model_dir)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ModelError, match="already exists"):
        save_model(model, tok, tmp_path / "exists")
    assert _tree_hashes(tiny_model_dir) == before


def test_load_errors_are_one_line(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="meta-llama/Llama-3.2-1B: not found in the Hugging Face cache .*hub "
                                         r"\(HF_HUB_OFFLINE is set") as exc:
        load_model("meta-llama/Llama-3.2-1B")
    assert "\n" not in str(exc.value)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(tmp_path / "empty")


def test_info(tiny_model_dir: Path, tiny_model) -> None:
    info = model_info(tiny_model_dir)
    assert info.parameters == sum(p.numel() for p in tiny_model.parameters())
    assert info.layers == 2 and info.architecture == "LlamaForCausalLM"
    assert info.weights_sha256 == model_hash(tiny_model_dir)


def _hub_cache(root: Path, repo: str, model_dir: Path, revision: str = "main") -> Path:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/REV, snapshots/COMMIT/files}."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(model_dir, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / revision).write_text(commit)
    return base / "snapshots" / commit


@pytest.mark.slow  # starts processes
def test_hub_id_resolves_from_the_cache_offline(tmp_path: Path, tiny_model_dir: Path) -> None:
    import os
    import subprocess
    import sys

    snapshot = _hub_cache(tmp_path / "hub", "acme/tiny", tiny_model_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from unlearn.model import load_model, model_hash, resolve_model;"
            "m, t = load_model(sys.argv[1]); print(resolve_model(sys.argv[1]), model_hash(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, "acme/tiny"], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, digest = out.stdout.split()
    assert Path(path) == snapshot and digest == model_hash(tiny_model_dir)
    out = subprocess.run([sys.executable, "-c", code, "acme/tiny@main"], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and Path(out.stdout.split()[0]) == snapshot
    missing = subprocess.run([sys.executable, "-m", "unlearn.cli.main", "info", "acme/absent"], env=env,
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert lines[-1].startswith("error: acme/absent: not found in the Hugging Face cache")
    assert str(tmp_path / "hub") in lines[-1] and "HF_HUB_OFFLINE" in lines[-1]


def test_load_options_dtype_and_device(tiny_model_dir: Path) -> None:
    import torch

    from unlearn.config import LoadOptions
    from unlearn.errors import ConfigError

    model, tok = load_model(tiny_model_dir, LoadOptions(dtype="bfloat16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16
    auto, _ = load_model(tiny_model_dir, LoadOptions(dtype="auto"))
    assert next(auto.parameters()).dtype == torch.float32  # as the checkpoint stores it
    with pytest.raises(ConfigError, match="dtype must be one of"):
        LoadOptions(dtype="int3")
