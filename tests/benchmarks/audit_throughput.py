"""Throughput of a full one-pass audit vs a bare forward pass, and vs the naive per-score loop.

Prints ratios measured in one run (medians over repeats), on the built-in target and its
forget + holdout records:
  full audit tokens/s / bare forward tokens/s   (target >= 0.90)
  full audit tokens/s / naive tokens/s          (one text at a time, one forward per score)

    python tests/benchmarks/audit_throughput.py [--preset tiny] [--repeats 5]
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


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, interleaved so that machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    bench = build(args.preset)
    model, tok = load_model(bench.target)
    records = bench.split("forget10") + bench.split("holdout")
    tokens = sum(len(encode(r, tok)[0]) for r in records)
    bs = args.batch_size
    bare_forward(model, tok, records, bs)  # warm-up
    t = timed({"bare": lambda: bare_forward(model, tok, records, bs),
               "full": lambda: score_records(model, tok, records, list(ONE_PASS_SCORES), batch_size=bs),
               "naive": lambda: naive(model, tok, records[: len(records) // 4], 0.4)}, args.repeats)
    t_bare, t_full, t_naive = t["bare"], t["full"], t["naive"] * 4
    print(f"records {len(records)}, tokens {tokens}, batch {bs}, median of {args.repeats}")
    print(f"bare forward   {tokens / t_bare:10.0f} tok/s")
    print(f"full audit     {tokens / t_full:10.0f} tok/s   (loss, zlib, min-k, min-k++ from one pass)")
    print(f"naive loop     {tokens / t_naive:10.0f} tok/s   (per text, one forward per score)")
    print(f"ratio full/bare  = {t_bare / t_full:.3f}   (target >= 0.90)")
    print(f"ratio full/naive = {t_naive / t_full:.1f}x")


if __name__ == "__main__":
    main()
