"""Exact deletion on a deletion-ready (sharded) model: retrain the shards that held the records, judge the new
version with the same battery as any receipt, and commit it with its ledger entry."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.workflows.common import SILENT, RecordSets, Reporter

if TYPE_CHECKING:
    from unlearn.workflows.forget import ForgetJob, ForgetResult


def forget_exact(job: ForgetJob, sets: RecordSets, path: Path, out: Path, ledger_path: Path, key: bytes,
                 report: Reporter = SILENT) -> ForgetResult:
    """The request against a sharded model: each shard holding a requested record is retrained from the
    checkpoint before its first such slice on its remaining records (`unlearn.sharded.delete`); the result is
    the recipe run without the records. The whole forget set is judged (no stopping rule looked at it)."""
    from unlearn import ledger, sharded
    from unlearn.auditors.stopping import forget_check
    from unlearn.fsutil import temp_sibling
    from unlearn.model import load_model, model_hash
    from unlearn.unlearner import UnlearnResult
    from unlearn.workflows.forget import ForgetResult, Splits, commit, judge

    before_hash = model_hash(path)
    plan = sharded.ShardPlan.from_dict(sharded.read_meta(path)["plan"])
    model, tok = load_model(path, job.load)
    splits = Splits.of(sets.holdout, sets.retain_eval, plan.seed)
    splits.forget_judged = list(sets.forget)
    report.note(f"exact deletion of {len(sets.forget)} record(s) from the sharded model {path} "
                f"({plan.shards} shards x {plan.slices} slices)")
    before = forget_check(model, tok, sets.forget, splits.holdout_verdict, splits.retain_verdict)
    staged = temp_sibling(out) / "model"
    try:
        start = time.perf_counter()
        run = sharded.delete(path, [*sets.forget, *sets.retain], [r.id for r in sets.forget], tok, staged,
                             on_stage=lambda s, r, n: report.progress(f"retraining shard {s}", r + 1, plan.slices))
        seconds = time.perf_counter() - start
        new, _ = load_model(staged, job.load)
        gold = load_model(job.retain_model, job.load)[0] if job.retain_model else None
        message = (f"retrained shard(s) {', '.join(f'{s} from slice {r}' for s, r in sorted(run.retrained.items()))}"
                   f" on their remaining records: {run.relative_cost:.3f} x training the sharded model anew")
        result = UnlearnResult(new, 0, "exact_retraining", message, wall_seconds=seconds,
                               stats={"retrained": {str(k): v for k, v in run.retrained.items()}})
        evidence = judge(result, tok, sets.forget, splits, before, job.battery, gold, report)
        receipt: dict[str, Any] = {
            "request": {"file": str(job.data.requests) if job.data.requests else None, "label": sets.label,
                        "ids": [r.id for r in sets.forget]},
            "sets": {"forget": len(sets.forget), "retain": len(sets.retain), "holdout": len(sets.holdout),
                     "retain_eval": len(sets.retain_eval)},
            "roles": splits.roles(sets.forget), "model_in": str(path), "model_in_sha256": before_hash,
            "out": str(out), "unchanged": False, "method": "exact", "config": plan.to_dict(), "exact": True,
            "retrained": {str(k): v for k, v in run.retrained.items()}, "retrain_cost": run.cost,
            "cost_relative_to_sharded_training": round(run.relative_cost, 4),
            "retain_model": str(job.retain_model) if job.retain_model else None, **evidence}
        content = ledger.make_entry(key, records=sets.forget, method="exact", config=plan.to_dict(),
                                    model_before=before_hash, request_file=job.data.requests,
                                    stop_reason="exact_retraining",
                                    extra={"verdict": evidence["verdict"], "exact": True})

        def files(directory: Path) -> str:
            for child in staged.iterdir():
                sharded.link_or_copy(child, directory / child.name)
            return sharded.sharded_hash(directory)

        entry = commit(ledger_path, key, content, out, receipt, None, tok, files=files)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    return ForgetResult(out, ledger_path, entry, receipt)
