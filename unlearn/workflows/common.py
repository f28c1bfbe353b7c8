"""What every workflow shares: the built-in benchmark as the default model and data, model references,
the record sets of a deletion request, progress reporting and all-or-nothing output directories."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.errors import InputError, UnlearnError
from unlearn.fsutil import temp_sibling
from unlearn.jsonio import show

if TYPE_CHECKING:  # the CLI imports this module before any work: torch is loaded only when data is
    from unlearn.data import DeletionRequest, Record

BUILTIN = ("builtin:target", "builtin:retain", "builtin:sharded", "builtin:sharded-retain")
PathLike = str | Path


class Reporter:
    """Where a workflow reports what it is doing. This base class is silent; the CLI's prints bars and lines."""

    def progress(self, task: str, completed: int, total: int | None = None, info: str = "") -> None:
        """Progress of a named task, e.g. ``("training target", 120, 300, "loss=0.41")``; total None = unknown."""

    def note(self, message: str) -> None:
        """A one-line message (what is about to run, a warning)."""


SILENT = Reporter()


def stats_line(stats: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in stats.items() if isinstance(v, (int, float)))


@dataclass(frozen=True)
class BenchmarkOptions:
    """The built-in benchmark, used wherever no model or data is given (built and cached on first use)."""

    preset: str = "default"
    cache: PathLike | None = None
    force: bool = False

    def build(self, report: Reporter = SILENT) -> Any:
        from unlearn.benchmark.build import build

        return build(self.preset, cache_dir=Path(self.cache) if self.cache else None, force=self.force,
                     on_progress=lambda name, step, total: report.progress(f"training {name}", step, total))


def is_builtin(spec: PathLike | None) -> bool:
    return spec is None or str(spec) in BUILTIN


def model_path(spec: PathLike | None, bench: Any) -> Path:
    """A model reference: a local directory, a Hugging Face hub id (``org/name[@revision]``, resolved through
    the HF cache to its local snapshot), or ``builtin:target`` / ``builtin:retain`` (None = target)."""
    if not is_builtin(spec):
        from unlearn.model import resolve_model

        return resolve_model(spec)  # type: ignore[arg-type]
    if bench is None:
        raise UnlearnError(f"'{spec}' names the built-in benchmark, which this run does not use")
    if str(spec).startswith("builtin:sharded"):  # deletion-ready training of the same recipe (4 x 4)
        return bench.sharded("retain" if str(spec).endswith("-retain") else "target")
    return bench.retain if str(spec) == "builtin:retain" else bench.target


def benchmark_if_needed(specs: Sequence[PathLike | None], options: BenchmarkOptions,
                        report: Reporter) -> Any | None:
    """The built-in benchmark when the first spec (the model) or any other spec names it, else None."""
    if is_builtin(specs[0]) or any(s is not None and str(s) in BUILTIN for s in specs[1:]):
        return options.build(report)
    return None


def new_out_dir(out: PathLike | None, prefix: str) -> Path:
    path = Path(out) if out else Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists():
        raise UnlearnError(f"output directory already exists: {path} (choose a new --out; nothing is overwritten)")
    return path


def write_outputs(out: Path, files: Mapping[str, Callable[[Path], Any]]) -> None:
    """Write result files into a temp sibling and rename it into place: no half-written results."""
    tmp = temp_sibling(out)  # PID-named: a dead run's leftovers can be told from a live run's
    try:
        for name, writer in files.items():
            writer(tmp / name)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class DataSources:
    """Where a deletion request and its sets come from. With no files, the built-in benchmark: one built-in
    person (or the whole ``forget_split``) against the built-in training data and holdout."""

    requests: PathLike | None = None
    manifest: PathLike | None = None
    data: tuple[PathLike, ...] = ()
    holdout: PathLike | None = None
    forget_split: str | None = None
    retain_eval: int = 200
    fields: Mapping[str, str] | None = None  # our field name -> the data's column, e.g. {"answer": "response"}

    def __post_init__(self) -> None:
        if self.retain_eval < 0:
            raise InputError(f"retain_eval must be >= 0, got {self.retain_eval}", field="retain_eval")


@dataclass
class RecordSets:
    request: DeletionRequest | None
    forget: list[Record]
    retain: list[Record]
    holdout: list[Record]
    retain_eval: list[Record]
    label: str

    def sizes(self) -> dict[str, int]:
        return {"forget": len(self.forget), "retain": len(self.retain), "holdout": len(self.holdout),
                "retain_eval": len(self.retain_eval)}


def _builtin_request(bench: Any, split: str | None) -> tuple[list[Record], str]:
    if split:
        return bench.split(split), f"built-in split {split}"
    first = bench.split("forget01")
    person = first[0].meta["person"]
    return [r for r in first if r.meta.get("person") == person], f"built-in person {person}"


def record_sets(src: DataSources, bench: Any | None, forget_ids: Sequence[str] | None = None) -> RecordSets:
    """The requests validated against the manifest, and the forget / retain / holdout / retain-eval sets.
    ``forget_ids`` (ids already validated, e.g. queued requests) replace the request file."""
    from unlearn.data import check_against_manifest, check_holdout, load_manifest, load_records, load_requests

    if bench is None:
        needed = (("requests",) if forget_ids is None else ()) + ("manifest", "data", "holdout")
        missing = [f"--{n}" for n in needed if not getattr(src, n)]
        if missing:
            raise UnlearnError(f"{', '.join(missing)} required for a model that is not the built-in benchmark")
    manifest = load_manifest(src.manifest or bench.manifest)
    data: list[Record] = []
    for path in src.data or [bench.split_path("train")]:
        records = load_records(path, fields=src.fields)
        check_against_manifest(records, manifest, path)
        data += records
    by_id = {r.id: r for r in data}
    request: DeletionRequest | None = None
    if forget_ids is not None:
        absent = [i for i in forget_ids if i not in by_id]
        if absent:
            raise InputError(f"queued ids are not in the training data: {', '.join(show(a) for a in absent[:10])}")
        forget, label = [by_id[i] for i in forget_ids], f"{len(forget_ids)} queued record(s)"
    elif src.requests:
        request = load_requests(src.requests, manifest)
        absent = [i for i in request.ids if i not in by_id]
        if absent:
            raise InputError(f"requested ids are in the manifest but not in the training data: "
                             f"{', '.join(show(a) for a in absent[:10])}", file=src.requests)
        forget = [by_id[i] for i in request.ids]
        label = f"{len(forget)} record(s) from {src.requests}"
    else:
        forget, label = _builtin_request(bench, src.forget_split)
    forget_ids = {r.id for r in forget}
    retain = [r for r in data if r.id not in forget_ids]
    holdout = load_records(src.holdout, fields=src.fields) if src.holdout else bench.split("holdout")
    check_holdout(holdout, manifest, src.holdout or bench.split_path("holdout"))
    retain_eval = random.Random(0).sample(retain, min(len(retain), src.retain_eval))
    return RecordSets(request, forget, retain, holdout, retain_eval, label)
