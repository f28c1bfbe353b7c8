"""unlearn: machine unlearning and data removal for language models.

One import root. Handling a deletion request and auditing the result::

    import unlearn

    sources = unlearn.DataSources(requests="requests.jsonl", manifest="manifest.jsonl",
                                  data=("train.jsonl",), holdout="holdout.jsonl")
    result = unlearn.forget(unlearn.ForgetJob(model="my-model", data=sources, method="npo", out="my-model-v2"))
    audit = unlearn.audit(unlearn.AuditJob(model=result.out, members="forget.jsonl", nonmembers="holdout.jsonl"))

Layers (imports flow one way): ``unlearn.cli -> unlearn.workflows -> unlearn.auditors -> unlearn.attacks
-> unlearn.methods -> the core`` (data, model I/O, log-probs, losses, curvature, ledger, receipt). Importing this
package loads none of them and changes nothing in the process environment; the names below are
imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.errors import ConfigError, InputError, ModelError, UnlearnError

__version__ = "0.1.0"

# Installed (wheel or editable), setuptools maps the repository folders attacks/, auditors/, cli/ and
# configs/ to unlearn.attacks, ... . Run from a source checkout that shadows the install (the
# repository root on sys.path, or a strict editable install), this finder does the same mapping.
_CHECKOUT = Path(__file__).resolve().parent.parent
_MAPPED = {"unlearn.attacks", "unlearn.auditors", "unlearn.cli", "unlearn.configs"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MAPPED:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(_CHECKOUT)])


if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "attacks" / "__init__.py").is_file() and not any(
        isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())  # this checkout's folders, not another install's

_LAZY = {
    # workflows: a request in, a result dataclass out (what the CLI calls)
    "forget": "unlearn.workflows.forget", "ForgetJob": "unlearn.workflows.forget",
    "ForgetResult": "unlearn.workflows.forget", "Receipt": "unlearn.receipt",
    "audit": "unlearn.workflows.audit", "AuditJob": "unlearn.workflows.audit", "AuditResult": "unlearn.workflows.audit",
    "compare": "unlearn.workflows.compare", "CompareJob": "unlearn.workflows.compare",
    "CompareResult": "unlearn.workflows.compare",
    "worst_case": "unlearn.workflows.worst_case", "WorstCaseJob": "unlearn.workflows.worst_case",
    "WorstCaseResult": "unlearn.workflows.worst_case",
    "attribute": "unlearn.workflows.attribute", "AttributeJob": "unlearn.workflows.attribute",
    "AttributeResult": "unlearn.workflows.attribute",
    "add_requests": "unlearn.workflows.requests", "AddJob": "unlearn.workflows.requests",
    "run_requests": "unlearn.workflows.requests", "RunJob": "unlearn.workflows.requests",
    "Store": "unlearn.store",
    "BenchmarkOptions": "unlearn.workflows.common", "DataSources": "unlearn.workflows.common",
    "resolve_method_args": "unlearn.workflows.forget",
    # core types
    "Record": "unlearn.data", "DeletionRequest": "unlearn.data", "load_records": "unlearn.data",
    "load_requests": "unlearn.data", "load_manifest": "unlearn.data",
    "load_model": "unlearn.model", "save_model": "unlearn.model",
    "UnlearnArgs": "unlearn.unlearner", "UnlearnResult": "unlearn.unlearner",
    "get_method": "unlearn.methods", "load_method_args": "unlearn.methods", "METHODS": "unlearn.methods",
    # what a job is built from
    "LoadOptions": "unlearn.config", "BatteryArgs": "unlearn.auditors.battery", "Reporter": "unlearn.workflows.common",
    # deletion-ready training (exact deletion by construction)
    "train": "unlearn.workflows.train", "TrainJob": "unlearn.workflows.train", "TrainResult": "unlearn.workflows.train",
    "ShardPlan": "unlearn.sharded",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (test_api checks they agree)
    from unlearn.auditors.battery import BatteryArgs
    from unlearn.config import LoadOptions
    from unlearn.data import DeletionRequest, Record, load_manifest, load_records, load_requests
    from unlearn.methods import METHODS, get_method, load_method_args
    from unlearn.model import load_model, save_model
    from unlearn.receipt import Receipt
    from unlearn.sharded import ShardPlan
    from unlearn.store import Store
    from unlearn.unlearner import UnlearnArgs, UnlearnResult
    from unlearn.workflows.attribute import AttributeJob, AttributeResult, attribute
    from unlearn.workflows.audit import AuditJob, AuditResult, audit
    from unlearn.workflows.common import BenchmarkOptions, DataSources, Reporter
    from unlearn.workflows.compare import CompareJob, CompareResult, compare
    from unlearn.workflows.forget import ForgetJob, ForgetResult, forget, resolve_method_args
    from unlearn.workflows.requests import AddJob, RunJob, add_requests, run_requests
    from unlearn.workflows.train import TrainJob, TrainResult, train
    from unlearn.workflows.worst_case import WorstCaseJob, WorstCaseResult, worst_case

__all__ = ["ConfigError", "InputError", "ModelError", "UnlearnError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unlearn' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
