"""The roles of the records (the stopping rule's monitored forget half, the receipt's judged half) and the small
commands around them: methods, --set, manifest."""

from __future__ import annotations

import json

import pytest

from unlearn.cli.main import main
from unlearn.data import qa_record
from unlearn.errors import InputError
from unlearn.splits import Splits, split_forget


def _people(n: int, per: int) -> list:
    return [qa_record(f"p{i}-{j}", f"q {i} {j}?", f"a {j}.", person=f"p{i}") for i in range(n) for j in range(per)]


def test_each_person_is_halved_and_the_halves_are_disjoint_and_complete() -> None:
    records = _people(6, 5)
    monitored, judged = split_forget(records, seed=3)
    assert {r.id for r in monitored}.isdisjoint({r.id for r in judged})
    assert len(monitored) + len(judged) == len(records)
    for i in range(6):
        mine = [r for r in monitored if r.meta["person"] == f"p{i}"]
        theirs = [r for r in judged if r.meta["person"] == f"p{i}"]
        assert (len(mine), len(theirs)) == (2, 3)  # the judged half gets the odd record


@pytest.mark.parametrize("people, per", [(1, 1), (1, 4)])
def test_a_holdout_of_one_person_is_one_input_error_not_a_division_by_zero(people, per) -> None:
    """A one-record (or one-person) holdout left the stopping rule or the verdict without held-out records:
    ZeroDivisionError / ValueError deep in a run. It is refused where the roles are assigned."""
    with pytest.raises(InputError, match=rf"field 'holdout': {people * per} held-out record\(s\) of 1 person"):
        Splits.of(_people(people, per), _people(3, 2), seed=0, forget=_people(2, 2))
    two = Splits.of(_people(2, 1), [], seed=0)  # two people: one each side
    assert len(two.holdout_calibration) == len(two.holdout_verdict) == 1


def test_the_split_is_keyed_by_record_not_by_position() -> None:
    """A record lands on the same side in any request that holds its person (the queue's versions), and another
    seed gives another split."""
    records = _people(6, 4)
    monitored, _ = split_forget(records, seed=0)
    again, _ = split_forget(list(reversed(records[:8])), seed=0)
    assert {r.id for r in again} == {r.id for r in monitored if r.meta["person"] in ("p0", "p1")}
    assert {r.id for r in split_forget(records, seed=1)[0]} != {r.id for r in monitored}


def test_one_record_per_person_splits_people_and_one_record_is_both() -> None:
    records = _people(7, 1)
    monitored, judged = split_forget(records)
    assert (len(monitored), len(judged)) == (3, 4)
    one = _people(1, 1)
    assert split_forget(one) == (one, one)


def test_methods_command_lists_every_argument_from_the_dataclass(capsys) -> None:
    assert main(["methods", "npo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    args = {a["argument"]: a for a in out["npo"]["arguments"]}
    assert args["beta"]["default"] == 0.1 and args["margin"]["default"] is None and args["lr"]["help"]
    assert main(["methods", "bogus"]) == 2


@pytest.mark.parametrize(("item", "ok"), [("beta=0.2", True), ("bogus=1", False), ("beta", False),
                                          ("beta=[1, 2", False), ("max_steps=-3", False), ("margin=7", False)])
def test_set_overrides_are_validated_like_the_config_file(item: str, ok: bool, capsys) -> None:
    code = main(["forget", "--method", "npo", "--set", item, "--dry-run", "--json"])
    out = capsys.readouterr()
    assert code == (0 if ok else 2), out
    if ok:
        assert json.loads(out.out)["config"]["beta"] == 0.2
    else:
        assert out.err.count("\n") == 1 and "error" in out.err.lower()


@pytest.mark.parametrize(("argv", "probe"), [([], False), (["--relearn-attack"], True),
                                             (["--relearn-attack", "--set", "relearn_probe=false"], False)])
def test_relearn_attack_turns_on_the_stopping_rules_probe_unless_told_not_to(argv, probe, capsys) -> None:
    assert main(["forget", "--method", "npo", *argv, "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["relearn_probe"] is probe


def test_manifest_command_writes_what_load_manifest_reads_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    from unlearn.data import build_manifest, load_manifest, write_jsonl

    records = _people(3, 2)
    write_jsonl(tmp_path / "a.jsonl", ({"id": r.id, "question": r.question, "answer": r.answer} for r in records[:4]))
    write_jsonl(tmp_path / "b.jsonl", ({"id": r.id, "question": r.question, "answer": r.answer} for r in records[4:]))
    out = tmp_path / "manifest.jsonl"
    assert main(["manifest", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--out", str(out)]) == 0
    got = load_manifest(out)
    assert {k: (e.source, e.sha256) for k, e in got.items()} == {
        e.id: (e.source, e.sha256) for e in build_manifest({"a.jsonl": records[:4], "b.jsonl": records[4:]})}
    capsys.readouterr()
    assert main(["manifest", str(tmp_path / "a.jsonl"), "--out", str(out)]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    write_jsonl(tmp_path / "c.jsonl", ({"id": r.id, "question": r.question, "answer": r.answer} for r in records[:1]))
    assert main(["manifest", str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"), "--out",
                 str(tmp_path / "m2.jsonl")]) == 2  # one id in two files
    assert not (tmp_path / "m2.jsonl").exists()


def test_audit_reads_files_with_other_column_names_through_fields(tmp_path, tiny_model_dir, capsys) -> None:
    from unlearn.data import write_jsonl

    def rows(prefix: str, n: int) -> list[dict]:
        return [{"uid": f"{prefix}{i}", "prompt": f"Where was Kalo Venra {prefix}{i} born?", "completion": "In X."}
                for i in range(n)]

    write_jsonl(tmp_path / "m.jsonl", rows("m", 6))
    write_jsonl(tmp_path / "n.jsonl", rows("n", 8))
    argv = ["audit", "--model", str(tiny_model_dir), "--members", str(tmp_path / "m.jsonl"), "--nonmembers",
            str(tmp_path / "n.jsonl"), "--out", str(tmp_path / "a"), "--json"]
    assert main(argv) == 2  # without --fields the records have no id / question / answer
    assert capsys.readouterr().err.count("\n") == 1
    assert main([*argv[:-3], "--out", str(tmp_path / "b"), "--json", "--fields",
                 "id=uid,question=prompt,answer=completion"]) == 0
    report = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert report["n_members"] == 6 and report["n_nonmembers"] == 8
