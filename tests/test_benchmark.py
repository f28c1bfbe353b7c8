from __future__ import annotations

import pytest
import torch

from unlearn.benchmark.build import PRESETS, build, exact_match
from unlearn.data import batches
from unlearn.model import load_model
from unlearn.training import token_nll

pytestmark = pytest.mark.slow


@torch.no_grad()
def _mean_nll(model, tok, records) -> float:
    losses = [token_nll(model, b).item() * len(b) for b in batches(records, tok, 64)]
    return sum(losses) / len(records)


def test_tiny_target_memorises_forget_set_and_retain_does_not(bench) -> None:
    target, tok = load_model(bench.target)
    retain, _ = load_model(bench.retain)
    forget, holdout = bench.split("forget10"), bench.split("holdout")
    assert _mean_nll(target, tok, forget) < 0.1 * _mean_nll(target, tok, holdout)
    assert exact_match(target, tok, forget) >= 0.9
    # The gold-standard retain model never saw the forget people: no better on them than on holdout.
    assert _mean_nll(retain, tok, forget) > 0.5 * _mean_nll(retain, tok, holdout)
    assert exact_match(retain, tok, forget) <= exact_match(retain, tok, holdout) + 0.05
    report = bench.report
    assert report["models"]["target"]["exact_match"]["forget10"] >= 0.9


def test_build_is_cached_by_config_key(bench) -> None:
    calls = []
    again = build("tiny", on_progress=lambda *a: calls.append(a))
    assert again.root == bench.root and calls == []
    assert PRESETS["tiny"].key() != PRESETS["default"].key()


def test_exact_match_agrees_with_greedy_generation(bench) -> None:
    model, tok = load_model(bench.target)
    records = bench.split("forget10")[:6] + bench.split("holdout")[:6]
    greedy_hits = 0
    for r in records:
        ids = torch.tensor([tok.encode(r.prompt)])  # the tokenizer adds its BOS
        out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        greedy_hits += int(text == r.response)
    assert exact_match(model, tok, records) == pytest.approx(greedy_hits / len(records))


def test_a_built_benchmark_reads_back_the_configuration_it_was_built_from(bench) -> None:
    """`Benchmark.config` (what the sharded versions are trained from) is the configuration whose key names
    the cache directory."""
    assert bench.config().key() == bench.root.name
