"""UnTrac / UnTrac-Inv / TracIn attribution, Spearman against scipy, and weight restoration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from unlearn.auditors.metrics import pearson, spearman
from unlearn.data import record_to_json, write_jsonl
from unlearn.errors import UnlearnError
from unlearn.methods.attribution import UnTracArgs, attribute
from unlearn.model import load_model


def test_spearman_and_pearson_equal_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 12).astype(float)  # many ties
        b = a + rng.integers(0, 3, 12)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        c, d = rng.normal(size=9), rng.normal(size=9)
        assert pearson(c, d) == pytest.approx(stats.pearsonr(c, d).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def _sources(bench):
    train = bench.split("train")
    by_topic: dict[str, list] = {}
    for r in train:
        by_topic.setdefault(r.meta.get("topic", "utility"), []).append(r)
    a, b = sorted(t for t in by_topic if t != "utility")[:2]
    return {a: by_topic[a][:60], b: by_topic[b][:60]}, a


@pytest.mark.slow
@pytest.mark.parametrize("method", ["untrac", "untrac-inv", "tracin"])
def test_verbatim_source_ranks_first_and_weights_are_restored(method: str, bench) -> None:
    sources, first = _sources(bench)
    test = sources[first][:20]  # a verbatim subset of one source
    model, tok = load_model(bench.target)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = UnTracArgs(steps=8, lr=1e-3, batch_size=4, inv_batch_size=20)
    scores = attribute(model, tok, sources, test, method, args)
    assert max(scores, key=scores.get) == first, scores
    assert scores[first] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-identical


def test_attribution_errors(tiny_model, tiny_tokenizer) -> None:
    from unlearn.data import qa_record

    recs = [qa_record("a", "Q?", "A.")]
    with pytest.raises(UnlearnError, match="empty dataset"):
        attribute(tiny_model, tiny_tokenizer, {"a": recs, "b": []}, recs, "untrac", UnTracArgs())
    with pytest.raises(UnlearnError, match="unknown attribution method 'x'"):
        attribute(tiny_model, tiny_tokenizer, {"a": recs}, recs, "x", UnTracArgs())


@pytest.mark.slow
def test_cli_attribute(tmp_path: Path, bench, capsys) -> None:
    from unlearn.cli.main import main

    sources, first = _sources(bench)
    paths = []
    for name, recs in sources.items():
        paths.append(tmp_path / f"{name}.jsonl")
        write_jsonl(paths[-1], [record_to_json(r) for r in recs])
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [record_to_json(r) for r in sources[first][:10]])
    out = tmp_path / "attr"
    argv = ["attribute", "--model", str(bench.target), "--train", *map(str, paths), "--test", str(test),
            "--method", "untrac", "--steps", "6", "--lr", "1e-3", "--batch-size", "4", "--out", str(out), "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ranking"][0]["dataset"] == first and payload["ranking"][0]["rank"] == 1
    assert json.loads((out / "attribution.json").read_text())["ranking"] == payload["ranking"]
