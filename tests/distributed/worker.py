"""One process of a distributed test run (launched by torchrun from tests/test_distributed.py, or alone
for the single-process reference). Writes the unlearned weights or the audit scores to --out (rank 0).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/worker.py --engine ddp \
        --method graddiff --out /tmp/w.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import CORPUS, make_tiny_model
from unlearn.data import qa_record

OVERRIDES = {"max_steps": 4, "eval_every": 0, "batch_size": 8, "retain_batch_size": 8, "lr": 1e-3,
             "grad_clip": 1.0, "seed": 0}


def records() -> tuple[list, list]:
    forget = [qa_record(f"f{i}", f"Where was Kalo Venra {i} born?", f"In the town of Tolmere {i}.") for i in range(16)]
    retain = [qa_record(f"r{i}", f"What pet does Mira Dun {i} keep?", f"A parrot named {i}.") for i in range(32)]
    return forget, retain


def accelerator(kind: str):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    from unlearn.distributed import make_accelerator

    if kind in ("single", "ddp"):
        return make_accelerator()
    stage = int(kind[-1])
    plugin = DeepSpeedPlugin(zero_stage=stage, gradient_clipping=OVERRIDES["grad_clip"])
    return Accelerator(deepspeed_plugin=plugin, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True, choices=["single", "ddp", "zero2", "zero3"])
    ap.add_argument("--method", default="graddiff")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE (yaml) method overrides")
    ap.add_argument("--audit", action="store_true", help="score records instead of unlearning")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import yaml

    from unlearn.benchmark.build import train_tokenizer
    from unlearn.distributed import is_main_process

    tok = train_tokenizer(CORPUS * 20, vocab_size=300)
    model = make_tiny_model(tok, seed=0)
    forget, retain = records()
    acc = accelerator(args.engine)
    if args.audit:
        from unlearn.attacks.runner import ONE_PASS_SCORES, score_records

        table = score_records(model, tok, forget + retain[:9], ONE_PASS_SCORES, batch_size=4)
        result = {k: torch.from_numpy(v) for k, v in table.scores.items()}
    else:
        from unlearn.methods import get_method, load_method_args

        extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
        margs = load_method_args(args.method, overrides={**OVERRIDES, **extra})
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        res = get_method(args.method).run(model, tok, forget, retain, margs, accelerator=acc)
        result = {k: v.detach().cpu().clone() for k, v in res.model.state_dict().items()}
        moved = sum(float((result[k] - init[k]).double().pow(2).sum()) for k in init) ** 0.5
        result["_steps"], result["_moved"] = torch.tensor(res.steps), torch.tensor(moved)
    if is_main_process():
        torch.save({**result, "_world": torch.tensor(acc.num_processes)}, args.out)
    acc.wait_for_everyone()
    if os.environ.get("WORLD_SIZE"):
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
