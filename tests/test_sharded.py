"""Deletion-ready (sharded) training: a deletion retrains only the shards that held the records, and the result
is exactly the recipe run without them."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_model
from unlearn import sharded
from unlearn.data import qa_record
from unlearn.training import TrainArgs

PLAN = sharded.ShardPlan(shards=3, slices=3, seed=5, train=TrainArgs(epochs=2, batch_size=4, lr=3e-3, bf16=False))


def _records(people: int = 12, per: int = 3) -> list:
    return [qa_record(f"p{i:02d}-{j}", f"Where was Kalo Venra {i} born {j}?", f"In Tolmere {i}.", person=f"p{i:02d}")
            for i in range(people) for j in range(per)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(path: Path, shard: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(sharded.member_dir(path, shard) / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("sharded")
    init = make_tiny_model(tiny_tokenizer, seed=3)
    records = _records()
    run = sharded.train_sharded(records, tiny_tokenizer, PLAN, init, root / "v1")
    return root, records, init, run


def test_assignment_keeps_a_person_in_one_shard_and_slice_and_is_deterministic(trained) -> None:
    root, records, _, _ = trained
    a = sharded.assign(records, PLAN)
    assert a == sharded.read_assignment(root / "v1") == sharded.assign(list(reversed(records)), PLAN)
    for person in {r.meta["person"] for r in records}:
        assert len({a[r.id] for r in records if r.meta["person"] == person}) == 1
    assert len({s for s, _ in a.values()}) == PLAN.shards  # 12 people fill 3 shards


def test_flagged_people_go_to_their_shards_last_slice_and_nobody_else_moves() -> None:
    """SISA's distribution-aware placement: a person with a record flagged deletion_risk takes the last slice of
    the shard the hash gives them (the flag on one record moves the whole person); everyone else keeps their
    place, so deleting the flagged people retrains only last stages, at the last stage's cost."""
    import dataclasses

    records = _records(people=30)
    flagged = {"p03", "p11", "p17", "p29"}
    marked = [dataclasses.replace(r, meta={**r.meta, sharded.RISK_FIELD: True})
              if r.meta["person"] in flagged and r.id.endswith("-1") else r for r in records]
    plain, risk = sharded.assign(records, PLAN), sharded.assign(marked, PLAN)
    for r in records:
        shard, slice_ = plain[r.id]
        assert risk[r.id] == ((shard, PLAN.slices - 1) if r.meta["person"] in flagged else (shard, slice_))
    assert any(plain[f"{p}-0"][1] < PLAN.slices - 1 for p in flagged)  # the flag moved someone
    gone = [r.id for r in records if r.meta["person"] in flagged]
    todo = sharded.plan_deletion(risk, gone)
    assert set(todo.values()) == {PLAN.slices - 1}
    kept = {k: v for k, v in risk.items() if k not in gone}
    last = sum(sharded.stage_cost(len(sharded.stage_records(records, kept, s, PLAN.slices - 1)), PLAN, PLAN.slices - 1)
               for s in todo)
    assert sharded.retrain_cost(kept, PLAN, todo) == last < sharded.retrain_cost(kept, PLAN, dict.fromkeys(todo, 0))


def test_full_cost_is_what_training_every_stage_processes(trained) -> None:
    """From the assignment alone, equal to summing each stage's records the slow way, and to what training did."""
    _, records, _, run = trained
    a = sharded.assign(records, PLAN)
    slow = sum(sharded.stage_cost(len(sharded.stage_records(records, a, s, r)), PLAN, r)
               for s in range(PLAN.shards) for r in range(PLAN.slices) if sharded.stage_records(records, a, s, r))
    assert sharded.full_cost(a, PLAN) == slow == run.cost == run.full_cost


def test_stage_epochs_set_each_stages_epochs_and_cost(tmp_path, tiny_tokenizer) -> None:
    """Front-loaded per-stage epochs: each stage trains its own epochs (steps = round(epochs x batches), counted
    by hand here), the plan survives sharded.json, and a late-slice deletion costs less of training than under
    the uniform plan with the same total; bad lists are refused with one line naming the field."""
    import dataclasses

    from unlearn.errors import ConfigError

    front = dataclasses.replace(PLAN, stage_epochs=(4, 1.5, 0.5))
    assert [sharded.stage_args(front, 0, r).epochs for r in range(3)] == [4, 1.5, 0.5]
    records = _records()
    a = sharded.assign(records, front)
    for s in range(front.shards):
        for r, e in enumerate(front.stage_epochs):
            n = len(sharded.stage_records(records, a, s, r))
            assert sharded.stage_cost(n, front, r) == max(1, round(e * -(-n // 4))) * 4
    init = make_tiny_model(tiny_tokenizer, seed=3)
    run = sharded.train_sharded(records, tiny_tokenizer, front, init, tmp_path / "v1")
    assert run.cost == sharded.full_cost(a, front)
    assert sharded.ShardPlan.from_dict(sharded.read_meta(tmp_path / "v1")["plan"]) == front
    late = next(r.id for r in records if a[r.id][1] == 2)
    share = {p: sharded.retrain_cost(a, p, {a[late][0]: 2}) / sharded.full_cost(a, p) for p in (front, PLAN)}
    assert share[front] < share[PLAN]
    for bad in ((1, 2), (1, 0, 1), (1, True, 1)):
        with pytest.raises(ConfigError, match="stage_epochs must be 3 positive numbers"):
            dataclasses.replace(PLAN, stage_epochs=bad)


def test_a_sharded_model_loads_as_one_causal_lm_averaging_member_probabilities(trained, tiny_tokenizer) -> None:
    from unlearn.model import load_model

    root, *_ = trained
    model, tok = load_model(root / "v1")
    assert isinstance(model, sharded.ShardEnsemble) and len(model.members) == PLAN.shards
    ids = torch.tensor([tok.encode("Where was Kalo Venra 3 born 1?")])
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask).logits
    probs = torch.stack([torch.softmax(m(input_ids=ids, attention_mask=mask).logits, -1) for m in model.members])
    torch.testing.assert_close(out.exp(), probs.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[:2]), rtol=1e-5, atol=1e-5)


def test_deletion_equals_the_recipe_run_without_the_records(trained, tiny_tokenizer) -> None:
    root, records, init, _ = trained
    gone = [r.id for r in records if r.meta["person"] == "p04"]
    run = sharded.delete(root / "v1", records, gone, tiny_tokenizer, root / "v2")
    a = sharded.read_assignment(root / "v1")
    shard, slice_ = a[gone[0]]
    assert run.retrained == {shard: slice_} and 0 < run.relative_cost < 1
    remaining = [r for r in records if r.id not in gone]
    # the reference: that shard's recipe from scratch on its remaining records (same init, seeds, order)
    ref = copy.deepcopy(init)
    kept = {k: v for k, v in a.items() if k not in gone}
    sharded.train_stages(ref, remaining, kept, PLAN, shard, tiny_tokenizer)
    # the cost the receipt states (from the assignment alone) is what retraining from that stage processes
    from_stage = sharded.load_state(copy.deepcopy(init), root / "v1" / "init" / "model.safetensors") \
        if slice_ == 0 else sharded.load_state(copy.deepcopy(init), sharded.member_dir(root / "v1", shard) / "stages"
                                               / f"stage-{slice_ - 1}.safetensors")
    _, spent = sharded.train_stages(from_stage, remaining, kept, PLAN, shard, tiny_tokenizer, slice_)
    assert run.cost == spent == sharded.retrain_cost(kept, PLAN, {shard: slice_})
    got = _weights(root / "v2", shard)
    for k, v in ref.state_dict().items():
        if k in got:
            assert torch.equal(got[k], v), k  # bitwise on CPU: every stage is deterministic
    for s in range(PLAN.shards):
        if s != shard:  # untouched members: the same bytes (hard links where the filesystem allows)
            for f in ("model.safetensors", "config.json"):
                assert _sha(sharded.member_dir(root / "v2", s) / f) == _sha(sharded.member_dir(root / "v1", s) / f)
    assert set(sharded.read_assignment(root / "v2")) == set(a) - set(gone)
    assert sharded.read_meta(root / "v2")["version"] == 2 and sharded.read_meta(root / "v1")["version"] == 1
    # a second deletion on top works the same way, and an id deleted twice is refused
    again = [r.id for r in records if r.meta["person"] == "p07"]
    run2 = sharded.delete(root / "v2", remaining, again, tiny_tokenizer, root / "v3")
    assert set(run2.retrained) == {a[again[0]][0]}
    with pytest.raises(Exception, match="not in this sharded model"):
        sharded.delete(root / "v3", remaining, gone, tiny_tokenizer, root / "v4")
    assert not (root / "v4").exists()


LORA = sharded.ShardPlan(shards=3, slices=3, seed=5, lora_rank=4, train=TrainArgs(epochs=2, batch_size=4, lr=3e-3,
                                                                                  bf16=False))


@pytest.fixture(scope="module")
def lora_trained(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("sharded-lora")
    init = make_tiny_model(tiny_tokenizer, seed=3)
    records = _records()
    sharded.train_sharded(records, tiny_tokenizer, LORA, init, root / "v1")
    return root, records, init


def _adapter_state(path: Path, shard: int) -> dict[str, torch.Tensor]:
    from unlearn import lora
    from unlearn.ensemble import load_member

    return sharded._state(lora.load(load_member(path / "init"), sharded.member_dir(path, shard)))


def test_lora_members_delete_exactly_and_leave_the_base_and_other_adapters_alone(lora_trained, tiny_tokenizer) -> None:
    """One adapter per shard on the shared base: a deletion retrains the one adapter from its checkpoint, equal
    (bitwise) to that shard's recipe from scratch (the same seeded adapter init) on its remaining records; the base
    and every other adapter are the same bytes; a second deletion on top, from stage 0, too."""
    root, records, init = lora_trained
    member = sharded.member_dir(root / "v1", 0)
    assert (member / "adapter_model.safetensors").is_file() and not (member / "model.safetensors").exists()
    assert (member / "adapter_model.safetensors").stat().st_size * 4 < (root / "v1" / "init" /
                                                                       "model.safetensors").stat().st_size
    a = sharded.read_assignment(root / "v1")
    version, remaining = root / "v1", records
    for n, person in enumerate(["p04", next(p for p in (f"p{i:02d}" for i in range(12))
                                            if a[f"{p}-0"][1] == 0 and p != "p04")], start=2):
        gone = [r.id for r in remaining if r.meta["person"] == person]
        run = sharded.delete(version, remaining, gone, tiny_tokenizer, root / f"v{n}")
        shard, slice_ = a[gone[0]]
        assert run.retrained == {shard: slice_}
        remaining = [r for r in remaining if r.id not in gone]
        ref = sharded.start_member(init, LORA, shard)
        sharded.train_stages(ref, remaining, {r.id: a[r.id] for r in remaining}, LORA, shard, tiny_tokenizer)
        got, want = _adapter_state(root / f"v{n}", shard), sharded._state(ref)
        # bitwise: every stage is deterministic (it was 2e-5 off in 1 process of 10 until unlearn.numerics: the
        # first cos of a process, in the first stage of v1, was off)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k
        for s in range(LORA.shards):
            if s != shard:
                f = Path(sharded.member_dir(root / "v1", s).name) / "adapter_model.safetensors"
                assert _sha(root / f"v{n}" / f) == _sha(version / f)
        assert _sha(root / f"v{n}" / "init" / "model.safetensors") == _sha(root / "v1" / "init" / "model.safetensors")
        version = root / f"v{n}"


def test_lora_members_serve_as_an_ensemble_or_merged_deltas(lora_trained, tiny_tokenizer) -> None:
    """mean_prob over adapters equals the mean of each adapter's own probabilities on a fresh base; merged_sum /
    merged_mean equal the base plus the sum / mean of (alpha / r) B A computed from the adapter files."""
    from safetensors.torch import load_file

    from unlearn import ensemble, lora
    from unlearn.model import load_model

    root, *_ = lora_trained
    model, tok = load_model(root / "v1")
    assert isinstance(model, sharded.ShardEnsemble) and len(model.members) == LORA.shards
    ids = torch.tensor([tok.encode("Where was Kalo Venra 3 born 1?")])
    mask = torch.ones_like(ids)
    alone = [lora.load(ensemble.load_member(root / "v1" / "init"), sharded.member_dir(root / "v1", s)).eval()
             for s in range(LORA.shards)]
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(input_ids=ids, attention_mask=mask).logits, -1) for m in alone])
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits.exp(), probs.mean(0),
                                   rtol=1e-5, atol=1e-7)
    base = load_file(str(root / "v1" / "init" / "model.safetensors"))
    deltas: dict[str, torch.Tensor] = {}
    for s in range(LORA.shards):
        w = load_file(str(sharded.member_dir(root / "v1", s) / "adapter_model.safetensors"))
        for k in w:
            if ".lora_A." in k:
                name = k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
                d = w[k.replace("lora_A", "lora_B")] @ w[k] * (LORA.lora_alpha / LORA.lora_rank)
                deltas[name] = deltas.get(name, 0) + d
    assert deltas and set(deltas) <= set(base)
    for mean in (False, True):
        merged = ensemble.merge_adapters(ensemble.load_adapters(root / "v1", LORA.shards),
                                         ensemble.adapter_names(LORA.shards), mean)
        got = merged.state_dict()
        assert not any("lora_" in k for k in got)
        for k, v in base.items():
            want = v + deltas[k] / (LORA.shards if mean else 1) if k in deltas else v
            torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-6)


def test_plan_rejects_bad_values() -> None:
    from unlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="shards must be >= 1"):
        sharded.ShardPlan(shards=0)
    with pytest.raises(ConfigError, match="aggregate"):
        sharded.ShardPlan(aggregate="max")
    with pytest.raises(ConfigError, match="needs lora_rank"):
        sharded.ShardPlan(aggregate="merged_sum")


def _files(tmp_path: Path, flagged: str | None = None) -> dict[str, Path]:
    """Training data (12 people of 3 facts; one fact of ``flagged`` marked deletion_risk), holdout (9 people),
    manifest, as a user has them on disk."""
    from dataclasses import asdict, replace

    from unlearn.data import build_manifest, write_jsonl

    def row(r) -> dict:
        return {"id": r.id, "question": r.question, "answer": r.answer, **r.meta}

    records = [replace(r, meta={**r.meta, sharded.RISK_FIELD: True}) if r.id == f"{flagged}-1" else r
               for r in _records(12, 3)]
    holdout = [qa_record(f"h{i:02d}-{j}", f"Where was Mira Dun {i} born {j}?", f"In Oskar {i}.", person=f"h{i:02d}")
               for i in range(9) for j in range(3)]
    write_jsonl(tmp_path / "train.jsonl", (row(r) for r in records))
    write_jsonl(tmp_path / "holdout.jsonl", (row(r) for r in holdout))
    write_jsonl(tmp_path / "manifest.jsonl", (asdict(e) for e in build_manifest({"train": records})))
    return {"train": tmp_path / "train.jsonl", "holdout": tmp_path / "holdout.jsonl",
            "manifest": tmp_path / "manifest.jsonl"}


def _train_cli(tmp_path: Path, f: dict[str, Path], base: Path, out: Path, *extra: str,
               epochs: tuple[str, str] = ("--epochs", "1")) -> None:
    from unlearn.cli.main import main

    assert main(["train", "--data", str(f["train"]), "--manifest", str(f["manifest"]), "--base-model", str(base),
                 "--shards", "2", "--slices", "2", *epochs, "--batch-size", "4", "--out", str(out),
                 "--json", *extra]) == 0


@pytest.mark.slow  # trains two tiny members and retrains one through the CLI
@pytest.mark.parametrize("members", ["full", "lora"])
def test_cli_train_then_forget_is_exact_with_a_receipt_and_a_verified_ledger(tmp_path, tiny_model_dir, capsys,
                                                                            members) -> None:
    import json

    from unlearn.cli.main import main
    from unlearn.data import write_jsonl
    from unlearn.ledger import verify
    from unlearn.model import load_model

    f = _files(tmp_path, flagged="p02")  # p02 asked to be deleted: flagged, in its shard's last slice
    gone = [f"p02-{j}" for j in range(3)]
    write_jsonl(tmp_path / "request.jsonl", ({"id": i} for i in gone))
    lora = members == "lora"
    _train_cli(tmp_path, f, tiny_model_dir, tmp_path / "v1",
               *(["--lora-rank", "4", "--aggregate", "merged_sum", "--lr", "1e-2"] if lora else []))
    capsys.readouterr()
    assert main(["forget", "--model", str(tmp_path / "v1"), "--requests", str(tmp_path / "request.jsonl"),
                 "--manifest", str(f["manifest"]), "--data", str(f["train"]), "--holdout", str(f["holdout"]),
                 "--out", str(tmp_path / "v2"), "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    shard, slice_ = sharded.read_assignment(tmp_path / "v1")[gone[0]]
    assert slice_ == 1 and sharded.read_meta(tmp_path / "v1")["deletion_risk_units"] == 1  # the last of 2 slices
    assert receipt["exact"] is True and receipt["retrained"] == {str(shard): slice_}
    assert receipt["verdict"] in ("REMOVED", "INCONCLUSIVE")  # never NOT REMOVED / OVER-UNLEARNED
    assert verify(tmp_path / "unlearn-ledger.jsonl").ok
    model, _ = load_model(tmp_path / "v2")
    assert isinstance(model, sharded.ShardEnsemble) != lora  # merged adapters: one plain model
    assert not set(gone) & set(sharded.read_assignment(tmp_path / "v2"))
    # the input is never modified, and the other member is the same file
    other, weights = 1 - shard, "adapter_model.safetensors" if lora else "model.safetensors"
    assert _sha(sharded.member_dir(tmp_path / "v2", other) / weights) == _sha(
        sharded.member_dir(tmp_path / "v1", other) / weights)


@pytest.mark.slow  # three versions of a two-member model
def test_the_queue_answers_sequential_requests_on_a_sharded_model_exactly(tmp_path, tiny_model_dir) -> None:
    from unlearn.data import write_jsonl
    from unlearn.ledger import verify
    from unlearn.workflows.common import DataSources
    from unlearn.workflows.requests import AddJob, RunJob, add_requests, run_requests

    f = _files(tmp_path)
    _train_cli(tmp_path, f, tiny_model_dir, tmp_path / "v0", epochs=("--stage-epochs", "1.5,0.5"))  # front-loaded
    src = DataSources(manifest=f["manifest"], data=(f["train"],), holdout=f["holdout"], retain_eval=20)
    people = ["p01", "p05", "p09"]
    for person in people:
        write_jsonl(tmp_path / f"{person}.jsonl", ({"id": f"{person}-{j}"} for j in range(3)))
        first = person == people[0]  # the store is created with the first request; later ones name only their file
        add_requests(AddJob(tmp_path / "store", tmp_path / f"{person}.jsonl", model=tmp_path / "v0" if first else None,
                            data=src if first else DataSources()))
        result = run_requests(RunJob(tmp_path / "store"))
        assert result.receipt.exact is not None and result.receipt.method == "exact"
        assert not {f"{person}-{j}" for j in range(3)} & set(sharded.read_assignment(result.out))
    assert result.version == 3 and len(sharded.read_assignment(result.out)) == 36 - 9
    # the last version is the recipe run without the three people: compare with a from-scratch training
    from unlearn.model import load_model

    init, tok = load_model(tiny_model_dir)
    plan = sharded.ShardPlan.from_dict(sharded.read_meta(tmp_path / "v0")["plan"])
    assert plan.stage_epochs == (1.5, 0.5)
    kept = [r for r in _records(12, 3) if r.meta["person"] not in people]
    sharded.train_sharded(kept, tok, plan, init, tmp_path / "scratch")
    for s in range(plan.shards):
        assert _sha(sharded.member_dir(result.out, s) / "model.safetensors") == _sha(
            sharded.member_dir(tmp_path / "scratch", s) / "model.safetensors")
    from unlearn.store import Store

    assert verify(Store(tmp_path / "store").ledger).ok


def test_bad_sharded_input_is_one_error_line(tmp_path, capsys) -> None:
    """A damaged sharded.json and `train --data` without a base model: one error line, exit 2, nothing written."""
    from unlearn.cli.main import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / sharded.SHARDED_FILE).write_text('{"format": "unlearn-sharded/1", "plan": {"shards": 0}}')
    (tmp_path / "d.jsonl").write_text('{"id": "a", "question": "q?", "answer": "x"}\n')
    (tmp_path / "h.jsonl").write_text('{"id": "b", "question": "q?", "answer": "y"}\n')
    assert main(["audit", "--model", str(bad), "--members", str(tmp_path / "d.jsonl"), "--nonmembers",
                 str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sharded.json" in err and "plan" in err and not (tmp_path / "a").exists()
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base-model" in err and not (tmp_path / "t").exists()
    for extra, says in ((["--stage-epochs", "3,1"], "stage_epochs must be 4 positive numbers"),
                        (["--stage-epochs", "1,1,1,1", "--epochs", "2"], "exclude each other")):
        assert main(["train", "--out", str(tmp_path / "t"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and not (tmp_path / "t").exists(), err
    with pytest.raises(SystemExit):  # argparse: not numbers
        main(["train", "--stage-epochs", "3,x"])
    assert "comma-separated numbers expected" in capsys.readouterr().err


def _left_padded(tokenizer, prompts: list[str]):
    from unlearn.data import collate, pad_id_of

    enc = [(tokenizer.encode(p, add_special_tokens=False), []) for p in prompts]
    return collate([(ids, [-100] * len(ids)) for ids, _ in enc], pad_id_of(tokenizer), padding_side="left")


def test_a_sharded_model_generates_greedily_by_its_own_next_token_distribution(tiny_tokenizer) -> None:
    """TOFU's ROUGE and generation need `generate` (sustainability.py crashed on it): with one member it is the
    member's own greedy `generate`; with two it is a slow reference: the ensemble's full forward on the whole
    sequence at every step, argmax at the last position (no cache), finished rows padded."""
    from unlearn.data import pad_id_of

    members = [make_tiny_model(tiny_tokenizer, seed=s).eval() for s in (1, 2)]
    with torch.no_grad():  # sharper than at init, so that a wrong position or cache changes the argmax
        for m in members:
            for p in m.parameters():
                p.mul_(4.0)
    b = _left_padded(tiny_tokenizer, ["Question: Where was Ana born?\nAnswer:", "a b", "Question: x?\nAnswer: y"])
    pad, eos = pad_id_of(tiny_tokenizer), tiny_tokenizer.eos_token_id
    alone = sharded.ShardEnsemble(members[:1]).generate(b.input_ids, b.attention_mask, max_new_tokens=12,
                                                        pad_token_id=pad, eos_token_id=eos)
    theirs = members[0].generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=12,
                                 do_sample=False, pad_token_id=pad, eos_token_id=eos)
    assert torch.equal(alone, theirs[:, : alone.shape[1]])
    ensemble = sharded.ShardEnsemble(members)
    ids, mask = b.input_ids, b.attention_mask
    done = torch.zeros(len(ids), dtype=torch.bool)
    for _ in range(12):  # the slow reference
        with torch.no_grad():
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = ensemble(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        nxt = torch.where(done, torch.full_like(logits[:, 0], pad, dtype=torch.long), logits.argmax(-1))
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(nxt[:, None])], 1)
        done |= nxt == eos
        if done.all():
            break
    fast = ensemble.generate(b.input_ids, b.attention_mask, max_new_tokens=12, pad_token_id=pad, eos_token_id=eos)
    assert torch.equal(fast, ids) and fast.shape[1] > b.input_ids.shape[1]
    with pytest.raises(ValueError, match="greedily"):
        ensemble.generate(b.input_ids, do_sample=True)


def test_the_benchmarks_schedule_processes_what_its_uniform_plan_does() -> None:
    """Relative per-stage epochs are scaled to the uniform plan's total: sum over stages of (r + 1) x E_r (the
    records a shard's stages process, in units of a slice) is the same, and the ratios are kept."""
    from unlearn.benchmark.build import PRESETS, sharded_plan

    cfg = PRESETS["default"]
    uniform, front = sharded_plan(cfg, 4, 4), sharded_plan(cfg, 4, 4, (6, 1, 1, 1))
    assert not uniform.stage_epochs and len(front.stage_epochs) == 4
    total = [sum((r + 1) * p.epochs(r) for r in range(4)) for p in (uniform, front)]
    assert total[0] == pytest.approx(total[1]) == pytest.approx(4 * cfg.recipe.train.epochs)
    assert front.epochs(0) / front.epochs(3) == pytest.approx(6) and front.epochs(1) == front.epochs(3)
