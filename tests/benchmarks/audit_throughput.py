"""Throughput and peak memory of a full one-pass audit (LOSS, zlib, Min-K%, Min-K%++) against a
re-implementation of the Min-K%++ authors' scoring loop (one text at a time, one forward per text, every score
from it; `reference` below, not their script), a bare batched forward pass and the naive per-score loop,
measured side by side in one run (medians over repeats) on the built-in forget + holdout records (short QA
texts, two threads: the ratio measures batching short texts; against the authors' own script on long
WikiMIA texts with one thread the gain was 1.11x at 1.09x memory):

  throughput full / reference     (target >= 1.5 on a real vocabulary)
  peak memory full / reference    (target <= 1.2)

    python tests/benchmarks/audit_throughput.py [--preset tiny] [--model DIR | --synthetic-vocab 49152]
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import torch

from unlearn.attacks.runner import ONE_PASS_SCORES, score_records
from unlearn.benchmark.build import build
from unlearn.data import batches, encode
from unlearn.logprobs import forward_logits
from unlearn.memory import PeakMemory
from unlearn.model import load_model


def bare_forward(model, tok, records, batch_size: int) -> None:
    with torch.no_grad():
        for b in batches(records, tok, batch_size):
            forward_logits(model, b)


def naive(model, tok, records, k: float) -> None:
    """What the reference Min-K% scripts do: per text, one forward per score."""
    with torch.no_grad():
        for r in records:
            ids, labels = encode(r, tok)
            x = torch.tensor([ids])
            for score in ONE_PASS_SCORES:
                logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
                lab = torch.tensor(labels[1:])
                keep = lab != -100
                lp = logp[keep].gather(-1, lab[keep, None])[:, 0]
                if score == "zlib":
                    float(lp.mean()) / len(zlib.compress(r.response.encode()))
                elif score in ("mink", "minkpp"):
                    vals = lp
                    if score == "minkpp":
                        p = logp[keep].exp()
                        mu = (p * logp[keep]).sum(-1)
                        vals = (lp - mu) / ((p * logp[keep] ** 2).sum(-1) - mu ** 2).sqrt()
                    vals.sort().values[: max(1, int(len(vals) * k))].mean()
                else:
                    lp.mean()


def reference(model, tok, records, k: float) -> None:
    """The Min-K%++ authors' script: one text at a time, one forward, every score from its logits."""
    with torch.no_grad():
        for r in records:
            ids, labels = encode(r, tok)
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            lab = torch.tensor(labels[1:])
            keep = lab != -100
            lp = logp[keep].gather(-1, lab[keep, None])[:, 0]
            p = logp[keep].exp()
            mu = (p * logp[keep]).sum(-1)
            pp = (lp - mu) / ((p * logp[keep] ** 2).sum(-1) - mu ** 2).sqrt()
            n = max(1, int(len(lp) * k))
            _ = (lp.mean(), float(lp.mean()) / len(zlib.compress(r.response.encode())), lp.sort().values[:n].mean(),
                 pp.sort().values[:n].mean())


def timed(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each function, interleaved so that machine noise hits all alike, and the peak
    resident memory of each (the process's high-water mark, reset before every call; median over repeats)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory("cpu") as pm:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            peaks[name].append(pm.peak_mb or float("nan"))
    return ({name: statistics.median(v) for name, v in times.items()},
            {name: statistics.median(v) for name, v in peaks.items()})


def synthetic(tok, vocab: int) -> torch.nn.Module:
    """A SmolLM-135M-shaped Llama (30 layers, 576 wide, 9 heads / 3 KV heads) with a real-size vocabulary,
    from a config (random weights: throughput and memory do not depend on them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default", help="built-in benchmark: its records (and its model)")
    ap.add_argument("--model", help="a model directory or hub id instead of the built-in target")
    ap.add_argument("--synthetic-vocab", type=int, help="a SmolLM-135M-shaped model with this vocabulary, from a "
                                                        "config (e.g. 49152)")
    ap.add_argument("--records", type=int, default=400, help="how many forget + holdout records")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    bench = build(args.preset)
    model, tok = load_model(args.model or bench.target)
    if args.synthetic_vocab:
        model = synthetic(tok, args.synthetic_vocab)
    records = (bench.split("forget10") + bench.split("holdout"))[: args.records]
    tokens = sum(len(encode(r, tok)[0]) for r in records)
    bs = args.batch_size
    bare_forward(model, tok, records[:bs], bs)  # warm-up
    t, peak = timed({"bare": lambda: bare_forward(model, tok, records, bs),
                     "full": lambda: score_records(model, tok, records, list(ONE_PASS_SCORES), batch_size=bs),
                     "reference": lambda: reference(model, tok, records, 0.2),
                     "naive": lambda: naive(model, tok, records[: len(records) // 4], 0.4)}, args.repeats)
    t["naive"] *= 4
    vocab = model.get_output_embeddings().weight.shape[0]
    params = sum(p.numel() for p in model.parameters())
    print(f"model {params / 1e6:.1f}M parameters, vocabulary {vocab}; records {len(records)}, tokens {tokens}, "
          f"batch {bs}, median of {args.repeats}")
    for name, what in (("bare", "bare forward, [B, T, V] logits"), ("full", "full audit (ours): 4 scores, one pass"),
                       ("reference", "reference: one text at a time, one forward, 4 scores"),
                       ("naive", "naive: one text at a time, one forward per score")):
        print(f"{what:52} {tokens / t[name]:10.0f} tok/s   peak RSS {peak[name]:8.0f} MiB")
    print(f"throughput full / reference = {t['reference'] / t['full']:.2f}x   (target >= 1.5)")
    print(f"peak memory full / reference = {peak['full'] / peak['reference']:.2f}x   (target <= 1.2)")
    print(f"throughput full / bare = {t['bare'] / t['full']:.3f}   full / naive = {t['naive'] / t['full']:.1f}x")


if __name__ == "__main__":
    main()
