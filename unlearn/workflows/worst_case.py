"""The forget set an unlearning method handles worst (Challenging Forgets' bi-level search), audited against
random sets of the same size."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unlearn.config import DEFAULT_METHOD, LoadOptions
from unlearn.errors import UnlearnError
from unlearn.jsonio import JsonObject
from unlearn.workflows.common import (
    SILENT,
    BenchmarkOptions,
    PathLike,
    Reporter,
    benchmark_if_needed,
    is_builtin,
    model_path,
    new_out_dir,
    write_outputs,
)


@dataclass(frozen=True)
class WorstCaseJob:
    """With no ``pool`` / ``holdout`` / ``retain`` files, the built-in forget split, holdout and retain split."""

    model: PathLike | None = None
    pool: PathLike | None = None
    holdout: PathLike | None = None
    retain: PathLike | None = None
    retain_model: PathLike | None = None
    k: int = 40
    method: str = DEFAULT_METHOD
    config: PathLike | None = None
    rounds: int = 4
    lower_steps: int = 10
    max_steps: int = 10
    random_sets: int = 3
    seed: int = 0
    out: PathLike | None = None
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model

    def __post_init__(self) -> None:
        from unlearn.errors import ConfigError

        bad = [f"{n} must be >= {lo}, got {getattr(self, n)}" for n, lo in
               (("k", 1), ("rounds", 0), ("lower_steps", 1), ("max_steps", 1), ("random_sets", 1), ("seed", 0))
               if getattr(self, n) < lo]
        if bad:
            raise ConfigError("; ".join(bad))


@dataclass
class WorstCaseResult:
    out: Path
    rows: list[JsonObject]
    random_summary: dict[str, dict[str, float]]
    gap: dict[str, float]
    selected_ids: list[str]
    payload: JsonObject = field(default_factory=dict)


def worst_case(job: WorstCaseJob, report: Reporter = SILENT) -> WorstCaseResult:
    from unlearn.attacks.adversarial import random_sets, worst_case_set
    from unlearn.attacks.runner import score_records
    from unlearn.auditors.metrics import auc, privleak
    from unlearn.benchmark.generator import RETAIN_OF
    from unlearn.data import load_records
    from unlearn.methods import get_method, load_method_args
    from unlearn.model import load_model
    from unlearn.params import restore, snapshot

    method = get_method(job.method)
    lower = load_method_args(job.method, job.config, {"max_steps": job.lower_steps, "eval_every": 0,
                                                      "seed": job.seed})
    final = load_method_args(job.method, job.config, {"max_steps": job.max_steps, "eval_every": 0, "seed": job.seed})
    if not is_builtin(job.model) and not (job.pool and job.holdout and job.retain):
        raise UnlearnError("--pool, --holdout and --retain are required for a model that is not the built-in one")
    bench = benchmark_if_needed([job.model, job.retain_model], job.benchmark, report)
    path = model_path(job.model, bench)
    pool = load_records(job.pool) if job.pool else bench.split(bench.retain_split)
    if job.k > len(pool):
        raise UnlearnError(f"k = {job.k} is larger than the pool ({len(pool)} records)")
    holdout = load_records(job.holdout) if job.holdout else bench.split("holdout")
    retain = load_records(job.retain) if job.retain else bench.split(RETAIN_OF[bench.retain_split])
    gold_path = (model_path(job.retain_model, bench) if job.retain_model else
                 bench.retain if bench is not None and not job.pool else None)
    out = new_out_dir(job.out, "worst-case")
    model, tok = load_model(path, job.load)
    gold = load_model(gold_path, job.load)[0] if gold_path else None

    def unlearn_with(a: Any) -> Any:
        return lambda m, recs: method.run(m, tok, recs, retain, a)

    search = f"worst-case search ({job.method})"
    wc = worst_case_set(model, tok, pool, job.k, unlearn_with(lower), rounds=job.rounds, seed=job.seed,
                        on_round=lambda r, n: report.progress(search, r, n))
    sets = {"worst-case": wc.indices, **{f"random-{i + 1}": s for i, s in
                                         enumerate(random_sets(len(pool), job.k, job.random_sets, job.seed))}}
    theta0 = snapshot(model)
    rows = []
    for i, (name, idx) in enumerate(sets.items()):
        report.progress("audit of each set", i, len(sets), name)
        recs = [pool[i] for i in idx]
        method.run(model, tok, recs, retain, final)
        s = score_records(model, tok, [*recs, *holdout], ["loss"]).scores["loss"]
        row = {"set": name, "loss_auc": auc(s[: len(recs)], s[len(recs):]),
               "residual_mean_logprob": float(s[: len(recs)].mean())}
        if gold is not None:
            g = score_records(gold, tok, [*recs, *holdout], ["loss"]).scores["loss"]
            row["privleak"] = privleak(row["loss_auc"], auc(g[: len(recs)], g[len(recs):]))
        rows.append(row)
        restore(model, theta0)
    report.progress("audit of each set", len(sets), len(sets))
    rand = [r for r in rows if r["set"] != "worst-case"]
    keys = [k for k in rows[0] if k != "set" and all(r[k] is not None for r in rows)]
    summary = {k: {"mean": float(np.mean([r[k] for r in rand])), "std": float(np.std([r[k] for r in rand]))}
               for k in keys}
    gap = {k: rows[0][k] - summary[k]["mean"] for k in keys}
    selected = [pool[i].id for i in wc.indices]
    payload = {"model": str(path), "method": job.method, "k": job.k, "seed": job.seed, "max_steps": job.max_steps,
               "selected_ids": selected, "rows": rows, "random_summary": summary, "gap": gap,
               "search_history": wc.history}
    write_outputs(out, {
        "selected.jsonl": lambda p: p.write_text("".join(json.dumps({"id": i}) + "\n" for i in selected)),
        "worst_case.json": lambda p: p.write_text(json.dumps(payload, indent=2))})
    return WorstCaseResult(out, rows, summary, gap, selected, payload)
