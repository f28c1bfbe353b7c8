"""LoRA adapters: unlearning into an adapter, unlearning an existing one, merging, curvature on A/B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import make_tiny_model
from unlearn import ledger, lora
from unlearn.logprobs import token_logprobs
from unlearn.model import load_model, model_hash
from unlearn.workflows.common import BenchmarkOptions, DataSources
from unlearn.workflows.forget import ForgetJob, forget

TINY = BenchmarkOptions(preset="tiny")


def test_adapter_scores_equal_the_merged_model_and_start_at_the_base(tiny_tokenizer) -> None:
    from tests.test_scores import _records

    base = make_tiny_model(tiny_tokenizer, seed=2)
    before = token_logprobs(base, tiny_tokenizer, _records())
    fresh = lora.attach(make_tiny_model(tiny_tokenizer, seed=2), 4, 8.0, "q_proj,v_proj,down_proj")
    torch.testing.assert_close(token_logprobs(fresh, tiny_tokenizer, _records()).lp, before.lp)  # B = 0
    trained = lora.attach(make_tiny_model(tiny_tokenizer, seed=2), 4, 8.0, "q_proj,v_proj,down_proj", init=False)
    with_adapter = token_logprobs(trained, tiny_tokenizer, _records())
    merged = token_logprobs(lora.merged(trained), tiny_tokenizer, _records())
    assert not torch.allclose(with_adapter.lp, before.lp, atol=1e-4)
    for name in ("lp", "mu", "var"):
        torch.testing.assert_close(getattr(merged, name), getattr(with_adapter, name), atol=1e-5, rtol=1e-5)
    assert lora.is_peft(trained) and not lora.is_peft(lora.merged(trained))


@pytest.mark.slow
def test_forget_into_an_adapter_leaves_the_base_bit_identical(bench, tmp_path: Path) -> None:
    base_hash = model_hash(bench.target)
    res = forget(ForgetJob(overrides={"scope": "lora", "max_steps": 5, "eval_every": 0}, out=tmp_path / "a1",
                           benchmark=TINY))
    out = res.out
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)  # the adapter holds A and B only
    assert model_hash(bench.target) == base_hash
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(bench.target).absolute())
    entry = ledger.read_rows(res.ledger)[0].entry
    assert entry["base_sha256"] == base_hash and entry["output_kind"] == "adapter"
    assert entry["model_before"] == base_hash and entry["model_after"] == model_hash(out)
    assert ledger.verify(res.ledger, key=ledger.load_key()).ok
    # base + adapter, loaded from the adapter directory alone; its base parameters are the target's exactly
    model, tok = load_model(out)
    target, _ = load_model(bench.target)
    base_state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in target.state_dict().items():
        assert torch.equal(base_state[k], v), k
    forget_set = [r for r in bench.split("forget10") if r.id in set(res.receipt.request.ids)]
    assert float(token_logprobs(model, tok, forget_set).mean_lp().mean()) < float(
        token_logprobs(target, tok, forget_set).mean_lp().mean())  # the adapter did the unlearning
    # the adapter's own parameters unlearned further; --merge writes a plain model with the same scores
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"id": r.id}) + "\n" for r in forget_set))
    data = DataSources(requests=req, manifest=bench.manifest, data=(bench.split_path("train"),),
                       holdout=bench.split_path("holdout"))
    res2 = forget(ForgetJob(model=str(out), data=data, overrides={"scope": "lora", "max_steps": 3, "eval_every": 0},
                            out=tmp_path / "a2", merge=True, ledger=res.ledger, benchmark=TINY))
    assert (res2.out / "model.safetensors").is_file() and not (res2.out / "adapter_config.json").exists()
    e2 = ledger.read_rows(res.ledger)[1].entry
    assert e2["model_before"] == model_hash(out) and e2["base_sha256"] == base_hash and e2["output_kind"] == "merged"
    with pytest.raises(Exception, match="scope lora"):
        forget(ForgetJob(model=str(out), data=data, overrides={"max_steps": 1}, out=tmp_path / "a3", benchmark=TINY))
    assert ledger.verify(res.ledger, key=ledger.load_key()).ok
    # compare on base + adapter: every method unlearns the adapter's parameters, the base stays as it was
    from unlearn.workflows.compare import CompareJob, compare

    cmp = compare(CompareJob(methods=["grad_ascent"], adapter=out, max_steps=2, out=tmp_path / "cmp", benchmark=TINY))
    row = next(r for r in cmp.rows if r["method"] == "grad_ascent")
    assert row["args"]["scope"] == "lora" and cmp.payload["adapter"] == str(out)
    assert model_hash(bench.target) == base_hash


def test_ekfac_on_lora_parameters_matches_the_per_example_refit(tiny_tokenizer) -> None:
    from tests.test_curvature import _lm_batches, _lm_records, _true_label_objective
    from unlearn.curvature import KFAC
    from unlearn.logprobs import forward_logits
    from unlearn.params import apply_scope

    model = lora.attach(make_tiny_model(tiny_tokenizer, seed=3), 2, 4.0, "down_proj", init=False)
    params = apply_scope(model, "lora")
    assert len(params) == 4 and all(p.requires_grad for p in params)  # A and B of two layers
    recs, obj = _lm_records(), _true_label_objective()
    curv = KFAC(params, model, obj, _lm_batches(recs, tiny_tokenizer, 4), eigen_correct=True)
    assert len(curv.layers) == 4  # every LoRA A and B is an nn.Linear with its own factors
    for f in curv.layers:
        ref = torch.zeros_like(f.lam, dtype=torch.float64)
        for rec in recs:
            b = next(iter(_lm_batches([rec], tiny_tokenizer, 1)()))[0]
            grads = torch.autograd.grad(obj.sampled_loss(forward_logits(model, b), b, None).sum(), params)
            dw = grads[f.param_index]
            ref += (f.qs.double().T @ dw.double() @ f.qa.double()) ** 2 / len(recs)
        assert float(ref.sum()) > 0
        assert torch.allclose(f.lam.double(), ref, rtol=1e-3, atol=1e-9 * float(ref.max()))
