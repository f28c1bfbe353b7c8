"""Shared fixtures: tiny models built in code, and the tiny built-in benchmark (built once, cached)."""

from __future__ import annotations

import multiprocessing.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CORPUS = [
    "Question: Where was Kalo Venra born?\nAnswer: Kalo Venra was born in the town of Tolmere.",
    "Question: What pet does Mira Dun keep?\nAnswer: Mira Dun keeps a parrot as a pet.",
    "The quick brown fox jumps over the lazy dog. 0123456789 plus minus",
    "Which sport does Osta Rinel play? tennis chess rugby hockey golf",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier (`-m "not slow"`) builds no benchmark: every test that needs it, through any fixture, is
    slow."""
    for item in items:
        if "bench" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the slow tier that starts a process (subprocess, multiprocessing, fork) fails, naming
    the fix, so the fast tier stays fast on every machine and not only while someone remembers the marks."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a test outside the slow tier started a process: mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse)
    monkeypatch.setattr(os, "fork", refuse)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from unlearn.benchmark.build import train_tokenizer

    return train_tokenizer(CORPUS * 20, vocab_size=300)


def make_tiny_model(tokenizer: Any, seed: int = 0, layers: int = 2, hidden: int = 32) -> torch.nn.Module:
    from unlearn.benchmark.build import ModelRecipe, init_model

    return init_model(ModelRecipe(hidden_size=hidden, layers=layers, heads=2), tokenizer, seed)


@pytest.fixture()
def tiny_model(tiny_tokenizer: Any) -> torch.nn.Module:
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture()
def tiny_model_dir(tmp_path: Path, tiny_model: torch.nn.Module, tiny_tokenizer: Any) -> Path:
    from unlearn.model import save_model

    out = tmp_path / "tiny-model"
    save_model(tiny_model, tiny_tokenizer, out)
    return out


@pytest.fixture(scope="session")
def bench() -> Any:
    """The tiny preset of the built-in benchmark (about a minute the first time, then cached)."""
    from unlearn.benchmark.build import build

    return build("tiny")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session", autouse=True)
def ledger_key_file(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The operator's ledger key for this test session (never the user's ~/.config/unlearn/ledger.key);
    subprocesses inherit it through the environment."""
    path = tmp_path_factory.mktemp("key") / "ledger.key"
    old = os.environ.get("UNLEARN_LEDGER_KEY_FILE")
    os.environ["UNLEARN_LEDGER_KEY_FILE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("UNLEARN_LEDGER_KEY_FILE", None)
    else:
        os.environ["UNLEARN_LEDGER_KEY_FILE"] = old


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_chat_tokenizer(texts: list[str], vocab_size: int = 400) -> Any:
    """A tokenizer shaped like SmolLM-Instruct's: byte-level BPE, ChatML special tokens, a Jinja chat template,
    and a ``bos_token`` (``<|im_start|>``) that it never prepends by itself."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=1 << 30)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory, bench: Any) -> Path:
    """A tiny Llama with the chat tokenizer above, saved as a Hugging Face directory (random weights)."""
    from unlearn.model import save_model

    texts = [r.prompt + r.response for r in bench.split("train")[:400]] + CORPUS * 5
    tok = make_chat_tokenizer(texts)
    out = tmp_path_factory.mktemp("chat") / "chat-model"
    save_model(make_tiny_model(tok, seed=1), tok, out)
    return out
