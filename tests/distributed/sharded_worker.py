"""One process of deletion-ready training under a launcher (torchrun from tests/test_distributed.py), or alone
for the single-process reference: trains a tiny sharded model into --out/v1, then deletes two people into
--out/v2. The shards are spread over the processes (`unlearn.sharded.my_shards`).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/sharded_worker.py --out /tmp/s
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import CORPUS, make_tiny_model
from unlearn.data import qa_record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--main-fails", action="store_true", help="only check that a failure of the main process's "
                                                              "part (`on_main`) reaches every process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from unlearn.distributed import make_accelerator, on_main, rank_world

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        make_accelerator()  # the process group (gloo on CPU)
    if args.main_fails:
        try:
            on_main(lambda: 1 / 0)
        except Exception as e:
            Path(args.out).mkdir(exist_ok=True)
            (Path(args.out) / f"rank-{rank_world()[0]}.txt").write_text(f"{type(e).__name__}: {e}")
    else:
        train_and_delete(Path(args.out), args.shards)
    if rank_world()[1] > 1:  # leave the group together (left open, its threads abort the process at exit)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train_and_delete(out: Path, shards: int) -> None:
    from unlearn import sharded
    from unlearn.benchmark.build import train_tokenizer
    from unlearn.distributed import is_main_process, rank_world
    from unlearn.training import TrainArgs

    tok = train_tokenizer(CORPUS * 20, vocab_size=300)
    records = [qa_record(f"p{i:02d}-{j}", f"Where was Kalo Venra {i} born {j}?", f"In Tolmere {i}.",
                         person=f"p{i:02d}") for i in range(12) for j in range(3)]
    plan = sharded.ShardPlan(shards=shards, slices=3, seed=5,
                             train=TrainArgs(epochs=2, batch_size=4, lr=3e-3, bf16=False))
    trained = sharded.train_sharded(records, tok, plan, make_tiny_model(tok, seed=3), out / "v1")
    gone = [r.id for r in records if r.meta["person"] in ("p04", "p07")]
    deleted = sharded.delete(out / "v1", records, gone, tok, out / "v2")
    if is_main_process():
        (out / "run.json").write_text(json.dumps({
            "world": rank_world()[1], "mine": sharded.my_shards(plan.shards), "train_cost": trained.cost,
            "delete_cost": deleted.cost, "retrained": {str(k): v for k, v in deleted.retrained.items()}}))


if __name__ == "__main__":
    main()
