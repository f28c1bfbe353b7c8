"""Which training dataset caused a behaviour? UnTrac, UnTrac-Inv or TracIn over named datasets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config import LoadOptions
from unlearn.errors import InputError
from unlearn.jsonio import JsonObject
from unlearn.workflows.common import SILENT, PathLike, Reporter, new_out_dir, write_outputs


@dataclass(frozen=True)
class AttributeJob:
    """``train``: dataset name -> JSONL (a list of paths is named by the file stems); ``args`` overrides
    of :class:`unlearn.methods.attribution.UnTracArgs` (steps, lr, batch_size, scope, seed, ...)."""

    model: PathLike
    train: Mapping[str, PathLike] | list[PathLike]
    test: PathLike
    method: str = "untrac"
    args: Mapping[str, Any] = field(default_factory=dict)
    out: PathLike | None = None
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model


@dataclass
class AttributeResult:
    out: Path
    ranking: list[JsonObject]  # {dataset, score, rank}, highest influence first
    payload: JsonObject = field(default_factory=dict)


def attribute(job: AttributeJob, report: Reporter = SILENT) -> AttributeResult:
    from unlearn.config import build_args
    from unlearn.data import load_records
    from unlearn.methods.attribution import ATTRIBUTION, UnTracArgs
    from unlearn.methods.attribution import attribute as run_attribution
    from unlearn.model import load_model

    ATTRIBUTION.entry(job.method)  # an unknown method fails before any work
    if isinstance(job.train, Mapping):
        named = {str(k): v for k, v in job.train.items()}
    else:
        names = [Path(p).stem for p in job.train]
        if len(set(names)) != len(names):
            raise InputError("training files must have distinct names (the name is the dataset label)",
                             file=job.train[0])
        named = dict(zip(names, job.train, strict=True))
    uargs = build_args(UnTracArgs, dict(job.args), "attribution arguments")
    sources = {n: load_records(p) for n, p in named.items()}
    test = load_records(job.test)
    out = new_out_dir(job.out, "attribute")
    model, tok = load_model(job.model, job.load)
    done = [0]

    def on_dataset(name: str) -> None:
        done[0] += 1
        report.progress(job.method, done[0], len(sources), name)

    scores = run_attribution(model, tok, sources, test, job.method, uargs, on_progress=on_dataset)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    ranking = [{"dataset": n, "score": s, "rank": r} for r, (n, s) in enumerate(ranked, 1)]
    payload = {"model": str(job.model), "test": str(job.test), "method": job.method, "args": uargs.to_dict(),
               "datasets": {n: str(p) for n, p in named.items()}, "ranking": ranking}
    write_outputs(out, {"attribution.json": lambda p: p.write_text(json.dumps(payload, indent=2))})
    return AttributeResult(out, ranking, payload)
