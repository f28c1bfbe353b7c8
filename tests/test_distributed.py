"""Two-process runs over gloo (torchrun) against the single-process result at the same global batch and
seed: GradDiff under DDP, NPO under DeepSpeed ZeRO-3, SOUL under ZeRO-2, and a sharded audit.

Measured on 2 CPU cores (relative L2 distance of all weights after 4 steps): DDP 7e-8, ZeRO-3 4e-8,
ZeRO-2 SOUL (GNB and sq_grad) 2e-7; the tolerance is 1e-5 for every engine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).parent / "distributed" / "worker.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, name: str, engine: str, *extra: str, procs: int = 2) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{name}.pt"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    head = [sys.executable] if engine == "single" else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={_port()}"]
    res = subprocess.run([*head, str(WORKER), "--engine", engine, "--out", str(out), *extra], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(out)


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if not k.startswith("_")]
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in keys)
    return (num / sum(float((a[k].double() ** 2).sum()) for k in keys)) ** 0.5


@pytest.mark.parametrize("engine,method,extra", [
    ("ddp", "graddiff", []),
    ("ddp", "npo", ["--set", "relearn_rho=0.5"]),
    ("zero3", "npo", []),
    ("zero2", "soul", ["--set", "hessian=gnb", "--set", "hessian_every=2"]),
    ("ddp", "newton", ["--set", "curvature=fisher", "--set", "max_steps=2", "--set", "lr=1.0"]),
])
def test_two_processes_match_one(tmp_path: Path, engine: str, method: str, extra: list[str]) -> None:
    single = _run(tmp_path, "single", "single", "--method", method, *extra)
    multi = _run(tmp_path, engine, engine, "--method", method, *extra)
    assert int(single["_world"]) == 1 and int(multi["_world"]) == 2
    assert int(single["_steps"]) == int(multi["_steps"]) == (2 if method == "newton" else 4)
    assert float(single["_moved"]) > 0.1  # the weights really moved (L2 distance from the start)
    assert _rel(single, multi) < 1e-5, (engine, _rel(single, multi))


def test_distributed_audit_matches_single(tmp_path: Path) -> None:
    single = _run(tmp_path, "single", "single", "--audit")
    multi = _run(tmp_path, "ddp", "ddp", "--audit")
    assert set(single) == set(multi) and len(single["loss"]) == 25  # 25 records: uneven shards, padded
    for k in ("loss", "zlib", "mink", "minkpp"):
        assert torch.allclose(single[k], multi[k], atol=1e-5), k


def test_cli_forget_through_accelerate_launch_matches_one_process(tmp_path: Path, bench) -> None:
    from safetensors.torch import load_file

    common = ["forget", "--preset", "tiny", "--method", "graddiff", "--max-steps", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cfg = Path(__file__).parents[1] / "configs" / "accelerate" / "multi_cpu_ddp.yaml"
    for name, extra in (("one", []), ("two", ["--accelerate-config", str(cfg)])):
        res = subprocess.run([sys.executable, "-m", "unlearn.cli.main", *common, "--out", str(tmp_path / name), *extra],
                             env=env, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-4000:]
    receipt = (tmp_path / "two" / "unlearn_receipt.json").read_text()
    assert '"steps": 3' in receipt
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("one", "two"))
    assert _rel(a, b) < 1e-5 and len((tmp_path / "unlearn-ledger.jsonl").read_text().splitlines()) == 2


def test_sharded_training_and_deletion_spread_over_processes_give_the_same_bytes(tmp_path: Path) -> None:
    """Deletion-ready training with the shards spread over 2 processes (3 shards: one process trains two), then
    a deletion of two people: every file of both versions is byte-identical to the single-process run (each
    shard is the same single-process loop with the same seeds, one thread), and the costs are the totals."""
    import hashlib
    import json

    worker = Path(__file__).parent / "distributed" / "sharded_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"single": [sys.executable], "multi": [sys.executable, "-m", "torch.distributed.run",
                                                  "--nproc_per_node=2", f"--master_port={_port()}"]}
    for name, head in runs.items():
        res = subprocess.run([*head, str(worker), "--out", str(tmp_path / name)], env=env, capture_output=True,
                             text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-4000:]

    def files(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = (json.loads((tmp_path / n / "run.json").read_text()) for n in runs)
    assert one["world"] == 1 and two["world"] == 2 and one["mine"] == [0, 1, 2] and two["mine"] == [0, 2]
    assert {k: v for k, v in one.items() if k not in ("world", "mine")} == \
        {k: v for k, v in two.items() if k not in ("world", "mine")}
    for version in ("v1", "v2"):
        a, b = files(tmp_path / "single" / version), files(tmp_path / "multi" / version)
        assert a == b and sum(k.endswith("model.safetensors") and k.startswith("shard-") for k in a) == 3, version
    assert not list(tmp_path.glob("*/.v*"))  # no temporary directory left behind


def test_a_failure_of_the_main_process_part_reaches_every_process(tmp_path: Path) -> None:
    """`on_main` (the main process makes a directory and tells the others): when it raises there, the other
    process raises too, naming it, instead of waiting in the broadcast."""
    worker = Path(__file__).parent / "distributed" / "sharded_worker.py"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_port()}", str(worker), "--main-fails", "--out", str(tmp_path)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "rank-0.txt").read_text().startswith("ZeroDivisionError")
    assert (tmp_path / "rank-1.txt").read_text() == "UnlearnError: the main process failed: ZeroDivisionError: " \
                                                    "division by zero"


def test_cli_train_under_accelerate_trains_one_shard_per_process_with_the_same_bytes(tmp_path: Path,
                                                                                       tiny_model_dir: Path,
                                                                                       capfd) -> None:
    """`unlearn train --accelerate-config multi_cpu_ddp` (2 processes, 2 shards: one each) writes the same
    files as the same command in one process."""
    import hashlib

    from tests.test_sharded import _files
    from unlearn.cli.main import main

    f = _files(tmp_path)
    for name, config in (("one", "single_process"), ("two", "multi_cpu_ddp")):
        assert main(["train", "--data", str(f["train"]), "--manifest", str(f["manifest"]), "--base-model",
                     str(tiny_model_dir), "--shards", "2", "--slices", "2", "--epochs", "1", "--batch-size", "4",
                     "--out", str(tmp_path / name), "--accelerate-config", config]) == 0
        said = capfd.readouterr()
        assert ("over 2 processes" in said.out + said.err) == (name == "two")

    def files(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert one == two and "shard-01/model.safetensors" in one
    # an exact deletion from it, in one process and in two: the same new version, committed once each
    from unlearn.data import write_jsonl

    write_jsonl(tmp_path / "request.jsonl", ({"id": f"p02-{j}"} for j in range(3)))
    for name, config in (("del-one", "single_process"), ("del-two", "multi_cpu_ddp")):
        assert main(["forget", "--model", str(tmp_path / "one"), "--requests", str(tmp_path / "request.jsonl"),
                     "--manifest", str(f["manifest"]), "--data", str(f["train"]), "--holdout", str(f["holdout"]),
                     "--out", str(tmp_path / name), "--accelerate-config", config]) == 0
        said = capfd.readouterr()
        assert ("over 2 processes" in said.out + said.err) == (name == "del-two")
    a, b = files(tmp_path / "del-one"), files(tmp_path / "del-two")
    weights = [k for k in a if k.endswith(".safetensors")]
    assert weights and {k: a[k] for k in weights} == {k: b[k] for k in weights}
    assert len((tmp_path / "unlearn-ledger.jsonl").read_text().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left
