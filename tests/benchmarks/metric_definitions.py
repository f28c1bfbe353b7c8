"""The exported metrics of the built-in target and retain models, as `unlearn compare` computes them
(one JSON line per model): run before and after a change of definitions to tabulate the difference.

    python tests/benchmarks/metric_definitions.py [--preset tiny] [--split forget10]
"""

from __future__ import annotations

import argparse
import json
import random

from unlearn.auditors.compare import Sets, evaluate, reference_of
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.model import load_model
from unlearn.splits import Splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--split", default="forget10")
    args = ap.parse_args()
    bench = build(args.preset)
    retain = bench.split(RETAIN_OF[args.split])
    views = {name: bench.split(name) for name in ("real_authors", "world_facts")}
    sets = Sets(bench.split(args.split), retain, Splits([], bench.split("holdout"), [],
                                                        random.Random(0).sample(retain, 200)), **views)
    gold, tok = load_model(bench.retain)
    ref = reference_of(gold, tok, sets)
    for name, path in (("target", bench.target), ("retain", bench.retain)):
        model = load_model(path)[0]
        metrics, _ = evaluate(model, tok, sets, ref)
        print(json.dumps({"model": name, **metrics}))


if __name__ == "__main__":
    main()
