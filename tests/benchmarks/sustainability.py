"""Sustainability (MUSE's question): does unlearning hold up over a stream of deletion requests?

Ten single-person requests drawn from the built-in forget split (the retain model never saw any of them, so it
stays the gold standard) are queued and answered one by one through the real request store
(`unlearn.workflows.requests`: stopping rule, regression guard, battery, commit), for each method and both
strategies (incremental from the latest version; the union from the original weights), then all ten as one
batched request. After each version: TOFU model utility relative to the target, LOSS and Min-K%++ AUC of
every answered request against the held-out verdict split (mean and worst over requests, and of their union),
the retain model's own AUC for the same people (what "forgotten" looks like), forget quality of the answered
people against the retain model, and wall time of the run.

``exact`` (in ``--methods``) is deletion-ready training: the store serves the built-in sharded target
(``builtin:sharded``, 4 shards x 4 slices) and every request retrains the shard that held the person; its
gold standard is the same recipe trained without the forget split, and its utility is relative to the sharded
target (``utility_rel``) and to the central target (``utility_rel_central``). One strategy: every version is
the recipe without the answered people, whichever way it is reached.

    python tests/benchmarks/sustainability.py [--preset default] [--methods graddiff,npo,exact] [--requests 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from pathlib import Path

from unlearn.auditors.battery import forget_holdout_scores
from unlearn.auditors.metrics import auc
from unlearn.auditors.tofu import evaluate_qa, forget_quality, model_utility
from unlearn.benchmark.build import build
from unlearn.benchmark.generator import RETAIN_OF
from unlearn.config import DEFAULT_METHOD
from unlearn.model import load_model
from unlearn.splits import Splits
from unlearn.store import Store
from unlearn.workflows.common import BenchmarkOptions
from unlearn.workflows.requests import AddJob, RegressionError, RunJob, add_requests, run_requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default="graddiff,npo", help="methods, and 'exact' for deletion-ready training")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--out", help="write every row as JSON lines here")
    args = ap.parse_args()
    bench = build(args.preset)
    options = BenchmarkOptions(preset=args.preset)
    split = bench.retain_split
    forget = bench.split(split)
    people = sorted({r.meta["person"] for r in forget})
    people = random.Random(0).sample(people, min(args.requests, len(people)))
    by_person = {p: [r for r in forget if r.meta["person"] == p] for p in people}
    retain = bench.split(RETAIN_OF[split])
    retain_eval = random.Random(0).sample(retain, min(len(retain), 200))  # as DataSources(retain_eval=200)
    splits = Splits.of(bench.split("holdout"), retain_eval, seed=0)
    u_sets = (splits.retain_verdict, bench.split("real_authors"), bench.split("world_facts"))
    target, tok = load_model(bench.target)
    gold, _ = load_model(bench.retain)

    def utility(model) -> float:
        return model_utility(evaluate_qa(model, tok, u_sets[0]), *(evaluate_qa(model, tok, s, true_side="answer")
                                                                   for s in u_sets[1:]))

    central_utility = utility(target)

    def gold_aucs(model) -> dict:
        """The gold standard's own separation of each person from the held-out people (it never saw any)."""
        gm, gh = forget_holdout_scores(model, tok, [r for p in people for r in by_person[p]], splits.holdout_verdict)
        offsets = dict(zip(people, itertools.accumulate([0] + [len(by_person[p]) for p in people]), strict=False))
        return {(p, score): auc(gm[score][offsets[p]:offsets[p] + len(by_person[p])], gh[score])
                for p in people for score in ("loss", "minkpp")}

    rows = []
    sink = Path(args.out).open("w") if args.out else None
    for method in args.methods.split(","):
        exact = method == "exact"
        if exact:  # deletion-ready training: the sharded target, judged against its own retain twin
            target, gold = load_model(bench.sharded("target"))[0], load_model(bench.sharded("retain"))[0]
        target_utility, gold_auc = utility(target), gold_aucs(gold)
        for strategy in ("incremental",) if exact else ("incremental", "original", "batched"):
            with tempfile.TemporaryDirectory() as tmp:
                store_dir = Path(tmp) / "store"
                schedule = [people] if strategy == "batched" else [[p] for p in people]
                answered: list[str] = []
                for step, group in enumerate(schedule, start=1):
                    req = Path(tmp) / f"r{step}.jsonl"
                    req.write_text("".join(json.dumps({"id": r.id}) + "\n" for p in group for r in by_person[p]))
                    add_requests(AddJob(store_dir, req, benchmark=options,
                                        model="builtin:sharded" if exact and step == 1 else None))
                    start = time.perf_counter()
                    try:
                        res = run_requests(RunJob(store_dir, method=DEFAULT_METHOD if exact else method,
                                                  benchmark=options,
                                                  strategy="original" if strategy == "original" else "incremental"))
                        outcome, verdict = "shipped", res.receipt.verdict
                    except RegressionError as exc:
                        outcome, verdict = "refused", str(exc)[:80]
                    seconds = time.perf_counter() - start
                    answered += group if outcome == "shipped" else []
                    versions = Store(store_dir).versions()
                    model = load_model(versions[-1].weights)[0] if versions else target
                    records = [r for p in answered for r in by_person[p]]
                    mu = utility(model)
                    row = {"method": method, "strategy": strategy, "request": step, "outcome": outcome,
                           "verdict": verdict, "seconds": round(seconds, 1), "answered": len(answered),
                           "utility_rel": round(mu / target_utility, 4),
                           "utility_rel_central": round(mu / central_utility, 4)}
                    if records:
                        fm, hm = forget_holdout_scores(model, tok, records, splits.holdout_verdict)
                        for score in ("loss", "minkpp"):
                            per = []
                            for p in answered:
                                idx = [i for i, r in enumerate(records) if r.meta["person"] == p]
                                per.append(auc(fm[score][idx], hm[score]))
                            row[f"{score}_auc_mean"] = round(sum(per) / len(per), 3)
                            row[f"{score}_auc_worst"] = round(max(per, key=lambda a: abs(a - 0.5)), 3)
                            row[f"{score}_auc_union"] = round(auc(fm[score], hm[score]), 3)
                            row[f"{score}_auc_retain_mean"] = round(sum(gold_auc[p, score] for p in answered)
                                                                    / len(answered), 3)
                        row["forget_quality"] = forget_quality(evaluate_qa(model, tok, records, rouge=False),
                                                               evaluate_qa(gold, tok, records, rouge=False))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if sink:
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
    print(f"\n{'method':9}{'strategy':12}{'req':>4} {'outcome':8}{'verdict':14}{'MU rel':>7}{'LOSS mean':>10}"
          f"{'worst':>7}{'retain':>7}{'Mk++ mean':>10}{'worst':>7}{'retain':>7}{'FQ':>9}{'sec':>7}")
    nan = float("nan")
    for r in rows:
        print(f"{r['method']:9}{r['strategy']:12}{r['request']:>4} {r['outcome']:8}{r['verdict'][:13]:14}"
              f"{r['utility_rel']:7.3f}{r.get('loss_auc_mean', nan):10.3f}{r.get('loss_auc_worst', nan):7.3f}"
              f"{r.get('loss_auc_retain_mean', nan):7.3f}{r.get('minkpp_auc_mean', nan):10.3f}"
              f"{r.get('minkpp_auc_worst', nan):7.3f}{r.get('minkpp_auc_retain_mean', nan):7.3f}"
              f"{r.get('forget_quality', nan):9.2e}{r['seconds']:7.1f}")


if __name__ == "__main__":
    main()
