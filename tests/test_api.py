"""The Python API as the README shows it: one import root, a deletion request and an audit in a few lines."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import unlearn

ROOT = Path(__file__).resolve().parents[1]


def readme_python_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README has no Python snippet"
    return blocks[0]


@pytest.mark.slow
def test_readme_snippet_handles_a_request_and_audits_it(bench, tmp_path: Path, monkeypatch, capsys) -> None:
    """Lay out the files the snippet names (built from the tiny built-in benchmark) and run it verbatim."""
    forget = [r for r in bench.split("forget10") if r.meta["person"] == bench.split("forget10")[0].meta["person"]]
    (tmp_path / "my-model").symlink_to(bench.target)
    (tmp_path / "retrained-model").symlink_to(bench.retain)
    (tmp_path / "manifest.jsonl").symlink_to(bench.manifest)
    (tmp_path / "train.jsonl").symlink_to(bench.split_path("train"))
    (tmp_path / "holdout.jsonl").symlink_to(bench.split_path("holdout"))
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps({"id": r.id}) + "\n" for r in forget))
    from unlearn.data import record_to_json, write_jsonl

    write_jsonl(tmp_path / "forget.jsonl", [record_to_json(r) for r in forget])
    monkeypatch.chdir(tmp_path)
    code = readme_python_snippet()
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result, audit = namespace["result"], namespace["audit"]
    assert result.receipt.request.ids == [r.id for r in forget]
    assert (tmp_path / "my-model-v2" / "unlearn_receipt.json").is_file() and result.ledger.is_file()
    assert result.receipt.after.forget_nll > result.receipt.before.forget_nll
    assert audit.report.n_members == len(forget) and (audit.out / "audit.json").is_file()
    assert audit.report.forget_quality is not None  # retain="retrained-model" was used
    printed = capsys.readouterr().out
    assert result.receipt.stop_reason in printed and str(audit.out) in printed
    assert os.path.realpath(tmp_path / "my-model") == str(bench.target)  # the input model is untouched


def test_one_import_root_exports_the_workflows_and_core_types() -> None:
    """Every exported name resolves to the object of the module it names, and the eager imports that type
    checkers and IDEs read (under TYPE_CHECKING) are exactly the lazy names, from the same modules."""
    import ast
    import importlib
    from pathlib import Path

    lazy = unlearn._LAZY
    for name, module in lazy.items():
        assert getattr(unlearn, name) is getattr(importlib.import_module(module), name), name
    for name in ("LoadOptions", "BatteryArgs", "Reporter", "ForgetJob", "AuditJob", "TrainJob", "ShardPlan"):
        assert name in unlearn.__all__, name  # everything a job is built from
    tree = ast.parse(Path(unlearn.__file__).read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    eager = {a.name: n.module for n in guarded.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert eager == lazy
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        unlearn.bogus  # noqa: B018
