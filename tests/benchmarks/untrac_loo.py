"""UnTrac, UnTrac-Inv and TracIn against leave-one-source-out retraining on the built-in benchmark.

Sources: the training data split by topic (10 fact topics + the utility facts = 11 sources, the
manifest's `source`). Test set: unseen (holdout) people's facts, skewed by topic (topic i contributes
the facts of 2(i+1) holdout people), so that the true effects differ. Ground truth per source:
L(test; model trained without it) - L(test; target), with the benchmark recipe and seed (models cached
in ~/.cache/unlearn/untrac-loo/). Prints Spearman and Pearson correlation of each method's scores with
the ground truth, and wall time relative to the leave-one-out retraining.

    python tests/benchmarks/untrac_loo.py [--preset tiny] [--steps 50 --lr 5e-5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unlearn.auditors.metrics import pearson, spearman
from unlearn.benchmark.build import PRESETS, build, default_cache_dir, init_model
from unlearn.methods.attribution import UnTracArgs, attribute, mean_loss
from unlearn.model import load_model, save_model
from unlearn.training import train_lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    bench = build(args.preset)
    train = bench.split("train")
    sources: dict[str, list] = {}
    for r in train:
        sources.setdefault(str(r.meta["topic"]), []).append(r)
    topics = sorted(t for t in sources if t != "utility")
    holdout = bench.split("holdout")
    people = sorted({r.meta["person"] for r in holdout})
    test = [r for i, t in enumerate(topics) for r in holdout
            if r.meta["topic"] == t and r.meta["person"] in people[: 2 * (i + 1)]]
    target, tok = load_model(bench.target)
    base = mean_loss(target, tok, test)

    cache = default_cache_dir() / "untrac-loo" / cfg.key()
    truth, loo_seconds = {}, 0.0
    for name in sources:
        path = cache / name
        if not path.exists():
            model = init_model(cfg.recipe, tok, cfg.generator.seed)
            t = time.perf_counter()
            train_lm(model, [r for r in train if r.meta["topic"] != name], tok, cfg.recipe.train)
            secs = time.perf_counter() - t
            save_model(model, tok, path, extra_files={"train_seconds.json": json.dumps(secs)})
        loo_seconds += json.loads((path / "train_seconds.json").read_text())
        truth[name] = mean_loss(load_model(path)[0], tok, test) - base
        print(f"leave out {name:12} ({len(sources[name]):4d} records): test loss change {truth[name]:+.4f}")

    names = list(sources)
    uargs = UnTracArgs(steps=args.steps, lr=args.lr, batch_size=args.batch_size)
    rows = []
    for method in ("untrac", "untrac-inv", "tracin"):
        t = time.perf_counter()
        scores = attribute(target, tok, sources, test, method, uargs)
        wall = time.perf_counter() - t
        a, b = [scores[n] for n in names], [truth[n] for n in names]
        rows.append({"method": method, "spearman": spearman(a, b), "pearson": pearson(a, b), "wall_s": wall,
                     "time_rel": wall / loo_seconds, "top3": sorted(names, key=lambda n: -scores[n])[:3]})
    print(f"\n{args.preset} benchmark: {len(names)} sources, test = {len(test)} holdout facts skewed by topic; "
          f"leave-one-out retraining took {loo_seconds:.0f} s in all; ascent: {uargs.steps} steps, lr {uargs.lr}, "
          f"batch {uargs.batch_size}")
    print(f"true top 3: {sorted(names, key=lambda n: -truth[n])[:3]}")
    print(f"{'method':12}{'spearman':>10}{'pearson':>10}{'wall s':>9}{'time/LOO':>10}  top 3")
    for r in rows:
        print(f"{r['method']:12}{r['spearman']:10.3f}{r['pearson']:10.3f}{r['wall_s']:9.1f}{r['time_rel']:10.4f}  "
              f"{r['top3']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"truth": truth, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
