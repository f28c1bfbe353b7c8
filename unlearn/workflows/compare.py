"""Compare unlearning methods on one forget set from the same weights and seed: one table of detectability,
privleak, forget quality, utility and cost, as JSON, CSV, PNG and open-unlearning's per-method files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.config import LoadOptions
from unlearn.errors import InputError
from unlearn.jsonio import JsonObject
from unlearn.workflows.common import (
    SILENT,
    BenchmarkOptions,
    DataSources,
    PathLike,
    RecordSets,
    Reporter,
    benchmark_if_needed,
    model_path,
    new_out_dir,
    record_sets,
    stats_line,
    write_outputs,
)

if TYPE_CHECKING:
    from unlearn.auditors.compare import Reference, Sets

CONFIG_KEYS = ("preset", "forget_split", "seed", "common", "methods")
COLUMNS = [("label", "method"), ("verdict", "verdict"), ("auc_loss", "AUC loss"), ("auc_zlib", "AUC zlib"),
           ("auc_mink", "AUC Min-K"), ("auc_minkpp", "AUC Min-K++"), ("privleak_mink", "privleak %"),
           ("forget_quality", "forget quality"), ("forget_truth_ratio", "forget TR"),
           ("model_utility", "model utility"), ("retain_utility", "retain utility"), ("retain_prob", "retain prob"),
           ("wall_seconds", "wall s"), ("peak_memory_mb", "peak MiB"), ("steps", "steps"),
           ("stop_reason", "stopped")]


@dataclass(frozen=True)
class CompareJob:
    """``config``: a compare yaml or a shipped preset name (configs/compare: ``all``, ``soul_vs_adamw``);
    ``methods`` (names or ``{name, label, args, config}`` mappings) wins over the config's list."""

    config: PathLike | None = None
    methods: Sequence[Any] | None = None
    model: PathLike | None = None
    retain_model: PathLike | None = None
    data: DataSources = DataSources()
    max_steps: int | None = None
    seed: int | None = None
    out: PathLike | None = None
    benchmark: BenchmarkOptions = BenchmarkOptions()
    load: LoadOptions = LoadOptions()  # prompt format, dtype, device, trust_remote_code of every model
    adapter: PathLike | None = None  # a LoRA adapter on ``model``: every method unlearns its parameters (scope lora)


@dataclass
class CompareResult:
    out: Path
    rows: list[JsonObject]  # one per model: retain, target, then each method
    payload: JsonObject = field(default_factory=dict)
    label: str = ""


def load_compare_config(spec: PathLike | None) -> JsonObject:
    from unlearn.config import read_yaml_mapping, resolve_config

    if spec is None:
        return {}
    path = resolve_config(spec, "compare")
    cfg = read_yaml_mapping(path)
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}", file=path)
    return cfg


def compare(job: CompareJob, report: Reporter = SILENT) -> CompareResult:
    from unlearn.auditors.compare import run_compare
    from unlearn.distributed import is_main_process
    from unlearn.model import load_model

    cfg = load_compare_config(job.config)
    specs, common, seed, options = _settings(job, cfg)
    bench = benchmark_if_needed([job.model, job.retain_model], options, report)
    path = model_path(job.model, bench)
    src = job.data
    if bench is not None and not src.requests and not src.forget_split:
        src = DataSources(src.requests, src.manifest, src.data, src.holdout,
                          cfg.get("forget_split", bench.retain_split), src.retain_eval)
    data = record_sets(src, bench)
    sets = _sets(data, bench, seed)
    out = new_out_dir(job.out, "compare")
    retain_path = (model_path(job.retain_model, bench) if job.retain_model else
                   bench.retain if bench is not None and src.forget_split == bench.retain_split else None)
    report.note(f"comparing {', '.join(s.label for s in specs)} on {data.label}: {len(sets.forget)} forget, "
                f"{len(sets.retain)} retain, {len(sets.splits.holdout_verdict)} holdout records; seed {seed}")
    rows, reference = _baseline_rows(job, path, retain_path, sets, report, [s.args(common, seed) for s in specs])
    current = [""]

    def on_method(label: str) -> None:
        current[0] = label
        report.progress(f"method {label}", 0, None)

    def on_step(step: int, total: int, stats: dict[str, float]) -> None:
        report.progress(f"method {current[0]}", step, total, stats_line(stats))

    rows += run_compare(lambda: load_model(path, job.load, adapter=job.adapter), sets, specs, reference=reference,
                        seed=seed, common=common, on_method=on_method, on_step=on_step)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    payload = {"model": str(path), "adapter": str(job.adapter) if job.adapter else None,
               "retain_model": str(retain_path) if retain_path else None, "forget": data.label,
               "seed": seed, "common": common, "rows": public}
    if is_main_process():
        write_outputs(out, _files(rows, public, payload, data.label))
    return CompareResult(out, public, payload, data.label)


def _settings(job: CompareJob, cfg: JsonObject) -> tuple[list[Any], JsonObject, int, BenchmarkOptions]:
    """The methods to run, the arguments common to them, the seed and the benchmark options (job over yaml)."""
    from unlearn.auditors.compare import parse_specs
    from unlearn.methods import METHODS

    options = job.benchmark
    if "preset" in cfg and options.preset == "default":
        options = BenchmarkOptions(cfg["preset"], options.cache, options.force)
    specs = parse_specs(job.methods or cfg.get("methods") or METHODS.names(), str(job.config or "methods"))
    common: JsonObject = dict(cfg.get("common") or {})
    if job.max_steps is not None:
        common["max_steps"] = job.max_steps
    if job.adapter is not None:  # base + adapter: the methods change the adapter only, as `forget` does
        common["scope"] = "lora"
    seed = job.seed if job.seed is not None else int(cfg.get("seed", 0))
    return specs, common, seed, options


def _sets(data: RecordSets, bench: Any, seed: int) -> Sets:
    """The compare sets: the stopping rule's calibration halves, the metrics' verdict halves."""
    from unlearn.auditors.compare import Sets
    from unlearn.splits import Splits

    views = {name: bench.split(name) for name in ("real_authors", "world_facts")} if bench is not None else {}
    return Sets(data.forget, data.retain, Splits.of(data.holdout, data.retain_eval, seed), **views)


def _baseline_rows(job: CompareJob, path: Path, retain_path: Path | None, sets: Sets, report: Reporter,
                   probes: list[Any]) -> tuple[list[JsonObject], Reference | None]:
    """The retain model's row (and its reference scores, which make every verdict relative; ``probes``: the
    methods' arguments, for their relearning probes) and the target's."""
    from unlearn.auditors.compare import evaluate, judged, reference_of
    from unlearn.model import check_same_tokenizer, load_model

    rows: list[JsonObject] = []
    reference = None
    report.progress("reference models", 0, 2)
    target, tok = load_model(path, job.load, adapter=job.adapter)
    if retain_path:
        retain_model, retain_tok = load_model(retain_path, job.load)
        check_same_tokenizer(tok, retain_tok, str(path), str(retain_path))
        reference = reference_of(retain_model, tok, sets, probes)
        rows.append({"label": "retain", "method": "retrain",
                     **evaluate(retain_model, tok, sets, reference, reference.battery["as is"])[0]})
        del retain_model
    metrics, per_record = judged(target, tok, sets, reference)
    rows.append({"label": "target", "method": "none", **metrics, "_per_record": per_record})
    report.progress("reference models", 2, 2)
    return rows, reference


def _files(rows: list[JsonObject], public: list[JsonObject], payload: JsonObject,
           label: str) -> dict[str, Callable[[Path], object]]:
    """compare.json, compare.csv, compare.png and open-unlearning's files per model."""
    from unlearn.auditors.compare import open_unlearning_files
    from unlearn.auditors.plots import plot_compare

    def write_csv(p: Path) -> None:
        skip = {k for k, _ in COLUMNS} | {"args", "model_utility_parts", "battery"}
        keys = [k for k, _ in COLUMNS] + sorted({k for r in public for k in r} - skip)
        with p.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(public)

    files: dict[str, Callable[[Path], object]] = {
        "compare.json": lambda p: p.write_text(json.dumps(payload, indent=2, default=str)),
        "compare.csv": write_csv, "compare.png": lambda p: plot_compare(public, p, title=label)}
    for r in rows:
        files[str(r["label"])] = lambda p, r=r: open_unlearning_files(r, p)
    return files
