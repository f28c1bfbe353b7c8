from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_tiny_model, write_lines
from unlearn.auditors.audit import AuditArgs, audit
from unlearn.cli.main import main
from unlearn.model import load_model, save_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target_retain(bench):
    return load_model(bench.target), load_model(bench.retain)[0]


def test_builtin_target_detected_retain_not(bench, target_retain) -> None:
    (target, tok), retain = target_retain
    forget, holdout = bench.split("forget10"), bench.split("holdout")
    args = AuditArgs(n_boot=200)
    on_target = audit(target, tok, forget, holdout, args, retain_model=retain, tofu=True)
    assert on_target.result("loss").auc >= 0.95 and on_target.detected
    # forget quality is a KS p-value (target vs retain truth ratios): the target must differ at the 5% level
    assert on_target.forget_quality is not None and on_target.forget_quality < 0.05
    assert -100 <= on_target.result("loss").privleak <= -90  # MUSE: the original model is about -100
    # privleak uses the retain model's own AUC, computed here independently (pairwise, ties half)
    from unlearn.attacks.runner import score_records

    r = score_records(retain, tok, [*forget, *holdout], ["loss"]).scores["loss"]
    m, n = r[: len(forget)], r[len(forget):]
    auc_r = float(((m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])).mean())
    res = on_target.result("loss")
    assert res.retain_auc == pytest.approx(auc_r, abs=1e-9)
    assert res.privleak == pytest.approx((auc_r - res.auc) / (1 - auc_r) * 100, abs=1e-9)
    on_retain = audit(retain, tok, forget, holdout, args, tofu=True)
    assert 0.35 <= on_retain.result("loss").auc <= 0.65 and not on_retain.detected
    assert on_retain.forget_quality is None and on_retain.result("loss").privleak is None


def test_cli_audit_default_and_fail_if_detected(tmp_path: Path, capsys) -> None:
    out = tmp_path / "a1"
    assert main(["audit", "--preset", "tiny", "--out", str(out), "--fail-if-detected"]) == 1
    text = capsys.readouterr().out
    assert "DETECTED" in text and "exchangeable" in text
    report = json.loads((out / "audit.json").read_text())
    assert report["detected"] is True and {r["score"] for r in report["results"]} == {"loss", "zlib", "mink",
                                                                                      "minkpp"}
    png = (out / "audit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert main(["audit", "--preset", "tiny", "--model", "builtin:retain", "--out", str(tmp_path / "a2"),
                 "--fail-if-detected", "--quiet"]) == 0
    assert json.loads((tmp_path / "a2" / "audit.json").read_text())["detected"] is False
    assert main(["audit", "--preset", "tiny", "--out", str(out)]) == 2  # never overwrites a result
    assert "already exists" in capsys.readouterr().err


def test_audit_bad_inputs(tmp_path: Path, capsys, bench, tiny_tokenizer) -> None:
    members = str(bench.split_path("forget01"))
    empty = write_lines(tmp_path / "empty.jsonl", [])
    nontext = write_lines(tmp_path / "nontext.jsonl", ['{"id": 1, "text": {"a": 1}}'])
    other = tmp_path / "other-model"
    save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, other)
    cases = [
        (["--members", str(empty), "--nonmembers", members], "empty.jsonl: no records"),
        (["--members", str(nontext), "--nonmembers", members], "nontext.jsonl:1 field 'text': must be a string"),
        (["--members", members, "--nonmembers", members, "--reference", str(other), "--scores", "loss,reference"],
         "tokenizer mismatch"),
        (["--members", members], "--members and --nonmembers are required"),
        (["--members", members, "--nonmembers", members], "both member and non-member"),
        (["--members", members, "--nonmembers", str(tmp_path / "nope.jsonl")], "nope.jsonl: file not found"),
        (["--scores", "loss,bogus"], "unknown score"),
    ]
    for extra, message in cases:
        model = [] if extra[0] == "--scores" else ["--model", str(bench.target)]
        code = main(["audit", "--preset", "tiny", *model, *extra, "--out", str(tmp_path / "x"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (extra, err)
        assert err.startswith("error:") and message in err and "\n" not in err, (extra, err)
    assert not (tmp_path / "x").exists()


def test_builtin_names_work_for_retain_and_reference(tmp_path: Path, bench, capsys) -> None:
    out = tmp_path / "a"
    assert main(["audit", "--preset", "tiny", "--model", str(bench.target), "--members",
                 str(bench.split_path("forget01")), "--nonmembers", str(bench.split_path("holdout")),
                 "--retain", "builtin:retain", "--reference", "builtin:retain", "--scores", "loss,reference",
                 "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["retain"] == str(bench.retain) and payload["forget_quality"] is not None
    assert {r["score"] for r in payload["results"]} == {"loss", "reference"}


def test_audit_tofu_reports_tofu_model_utility_from_files_and_builtin(tmp_path: Path, bench, capsys) -> None:
    import random

    from unlearn.auditors.tofu import TOFU_UTILITY_PARTS
    from unlearn.data import record_to_json, write_jsonl

    retain_eval = random.Random(0).sample(bench.split("retain90"), 200)
    write_jsonl(tmp_path / "retain_perturbed.jsonl", [record_to_json(r) for r in retain_eval])
    files = ["--members", str(bench.split_path("forget10")), "--nonmembers", str(bench.split_path("holdout")),
             "--retain", str(bench.retain), "--retain-eval", str(tmp_path / "retain_perturbed.jsonl"),
             "--real-authors", str(bench.split_path("real_authors")),
             "--world-facts", str(bench.split_path("world_facts"))]
    assert main(["audit", "--preset", "tiny", "--model", str(bench.target), *files, "--tofu", "--json",
                 "--scores", "loss", "--out", str(tmp_path / "a")]) == 0
    from_files = json.loads(capsys.readouterr().out)["tofu"]["summary"]
    assert set(TOFU_UTILITY_PARTS) <= set(from_files) and 0 < from_files["model_utility"] <= 1
    assert from_files["forget_quality"] < 0.01 and from_files["forget_Q_A_Prob"] > 0.9
    assert main(["audit", "--preset", "tiny", "--tofu", "--json", "--scores", "loss", "--out",
                 str(tmp_path / "b")]) == 0
    builtin = json.loads(capsys.readouterr().out)["tofu"]["summary"]
    assert builtin == pytest.approx(from_files)  # the built-in defaults are the same sets
    code = main(["audit", "--preset", "tiny", "--model", str(bench.target), *files[:6], "--tofu", "--scores", "loss",
                 "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--tofu model utility needs --retain-eval, --real-authors, --world-facts" in err


def test_a_shift_without_a_reference_cannot_be_judged_and_a_reference_makes_it_relative(tiny_tokenizer) -> None:
    """Members with short answers, non-members with long ones, on a model that saw neither: an absolute test
    would call the length shift membership (either way). Without a never-trained baseline the audit says CANNOT
    JUDGE (and `detected` is False); with one (here another never-trained model) the verdict is relative."""
    from unlearn.data import qa_record

    members = [qa_record(f"m{i}", f"Where was Kalo Venra {i} born?", "In X.", person=f"m{i // 3}")
               for i in range(24)]
    nonmembers = [qa_record(f"n{i}", f"Where was Mira Dun {i} born?", "In the town of Tolmere by the lazy dog "
                            "plus minus quick brown fox jumps.", person=f"n{i // 3}") for i in range(30)]
    model, other = make_tiny_model(tiny_tokenizer, seed=1), make_tiny_model(tiny_tokenizer, seed=2)
    args = AuditArgs(n_boot=50)
    alone = audit(model, tiny_tokenizer, members, nonmembers, args)
    assert alone.presence == "CANNOT JUDGE" and not alone.detected and not any(r.detected for r in alone.results)
    assert alone.verdict.startswith("CANNOT JUDGE") and "differ in length" in alone.verdict
    relative = audit(model, tiny_tokenizer, members, nonmembers, args, reference=other)
    assert relative.removal["relative"] and relative.presence != "CANNOT JUDGE"
