"""The roles of the records: the stopping rule's monitored forget half and the receipt's judged half."""

from __future__ import annotations

import json

import pytest

from unlearn.auditors.battery import split_forget
from unlearn.cli.main import main
from unlearn.data import qa_record


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
                                          ("beta=[1, 2", False), ("max_steps=-3", False)])
def test_set_overrides_are_validated_like_the_config_file(item: str, ok: bool, capsys) -> None:
    code = main(["forget", "--set", item, "--dry-run", "--json"])
    out = capsys.readouterr()
    assert code == (0 if ok else 2), out
    if ok:
        assert json.loads(out.out)["config"]["beta"] == 0.2
    else:
        assert out.err.count("\n") == 1 and "error" in out.err.lower()
