"""The typed receipt: one definition for forget, exact deletion and the queue; its JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unlearn.errors import InputError
from unlearn.receipt import (
    SCHEMA,
    AdapterInfo,
    Evidence,
    ExactInfo,
    LedgerRef,
    LossCheck,
    Receipt,
    RequestInfo,
    VersionInfo,
)


def evidence(verdict: str = "INCONCLUSIVE") -> Evidence:
    return Evidence(steps=3, stop_reason="max_steps", stop_message="reached max_steps=3", verdict=verdict,
                    verdict_message="m",
                    battery={"verdict": {"margin": 0.1, "relative": True}, "attacks": [], "notes": []},
                    wall_seconds=1.5, battery_seconds=0.25, peak_memory_mb=None, peak_memory_kind=None,
                    before=LossCheck(0.9, 1e-4, 0.5, 0.7), after=LossCheck(0.55, 0.3, 1.5),
                    history=[{"step": 0, "status": "NOT REMOVED"}], method_stats={"certificate": {"x": 1.0}},
                    retain_utility_relative=0.98)


def receipt(**fields) -> Receipt:
    base = dict(request=RequestInfo("built-in person p1", ["a", "b"], "req.jsonl", 1), roles={"forget": ["a", "b"]},
                model_in="in", model_in_sha256="00" * 32, out="out", unchanged=False, method="npo",
                config={"lr": 1e-5}, sets={"forget": 2, "retain": 5, "holdout": 4, "retain_eval": 3},
                template={"kind": "plain"}, special_prefix=[1], ledger=LedgerRef("/l.jsonl", "ab" * 32))
    return Receipt.of(evidence(), **{**base, **fields})


@pytest.mark.parametrize("extra", [
    {},
    {"adapter": AdapterInfo("adapter-dir", "cd" * 32, "adapter")},
    {"exact": ExactInfo({"0": 2}, 40, 0.125), "method": "exact"},
    {"version": VersionInfo(2, 1, "incremental", ["req-2"], ["req-1", "req-2"], {"req-1": "REMOVED"}, [])},
])
def test_a_receipt_survives_its_json(extra) -> None:
    r = receipt(**extra)
    text = json.dumps(r.to_dict())
    back = Receipt.from_dict(json.loads(text))
    assert back == r and back.to_dict() == r.to_dict()


def test_the_json_is_the_flat_layout_receipts_have_always_had() -> None:
    """Readers of unlearn_receipt.json index these keys (the evidence at the top level, exact and version
    sections flattened, an adapter's input under ``in``), plus the schema version."""
    d = receipt(adapter=AdapterInfo("a", "cd" * 32, "adapter"), exact=ExactInfo({"1": 0}, 9, 0.5),
                version=VersionInfo(3, 2, "original", ["r"], ["r"], {"r": "REMOVED"}, ["q"])).to_dict()
    assert d["schema"] == SCHEMA and d["steps"] == 3 and d["after"]["forget_auc"] == 0.55
    assert d["after"]["retain_prob"] is None and d["before"]["retain_prob"] == 0.7
    assert d["exact"] is True and d["retrained"] == {"1": 0} and d["cost_relative_to_sharded_training"] == 0.5
    assert d["version"] == 3 and d["parent"] == 2 and d["repaired"] == ["q"]
    assert d["request_verdicts"] == {"r": "REMOVED"}
    assert d["adapter"] == {"in": "a", "base_sha256": "cd" * 32, "output": "adapter"}
    assert d["request"] == {"label": "built-in person p1", "ids": ["a", "b"], "file": "req.jsonl",
                            "duplicates_folded": 1}
    assert d["ledger"] == {"path": "/l.jsonl", "entry_hash": "ab" * 32}
    assert receipt().to_dict()["exact"] is False and "retrained" not in receipt().to_dict()


def test_every_evidence_field_is_a_receipt_field_and_the_receipt_reads_like_its_verdict() -> None:
    assert {f.name for f in dataclasses.fields(Evidence)} <= {f.name for f in dataclasses.fields(Receipt)}
    assert receipt().entry_hash == "ab" * 32 and receipt(ledger=None).entry_hash == ""
    assert not receipt().removed and Receipt.of(evidence("REMOVED"), **{
        k: getattr(receipt(), k) for k in ("request", "roles", "model_in", "model_in_sha256", "out", "unchanged",
                                           "method", "config")}).removed


@pytest.mark.parametrize("edit, word", [
    (lambda d: d.update(schema=99), "schema"),
    (lambda d: d.pop("schema"), "schema"),
    (lambda d: d.pop("after"), "after"),
    (lambda d: d.update(before=[1, 2]), "expected an object"),
    (lambda d: d.update(exact=True), "retrained"),
])
def test_a_damaged_receipt_is_one_input_error(edit, word) -> None:
    d = receipt().to_dict()
    edit(d)
    with pytest.raises(InputError, match=word):
        Receipt.from_dict(d)


def test_the_receipt_and_the_json_type_resolve_for_tooling() -> None:
    """The JSON alias is recursive: its self-reference must resolve from any module (typing.get_type_hints,
    as IDEs and dataclass tooling call it), not only in unlearn.jsonio."""
    import typing

    from unlearn.data import Record

    hints = typing.get_type_hints(Receipt)
    assert hints["before"] is LossCheck and "battery" in hints and "meta" in typing.get_type_hints(Record)


@pytest.mark.parametrize("extra, verdict, words", [
    ({}, "INCONCLUSIVE", "unlearned with npo, verdict INCONCLUSIVE"),
    ({}, "REMOVED", "removed with npo (within +-0.100 AUC)"),
    ({"exact": ExactInfo({"2": 1}, 40, 0.21), "method": "exact"}, "INCONCLUSIVE",
     "deleted exactly (shard(s) 2 retrained, 0.21 x training anew), battery verdict INCONCLUSIVE"),
    ({"unchanged": True}, "REMOVED", "answered with no change"),
])
def test_the_printed_headline_says_what_the_receipt_says(extra, verdict, words, capsys) -> None:
    """"removed" only on a REMOVED verdict; an exact deletion says it is one, with the battery's verdict beside."""
    from unlearn.cli.common import UI
    from unlearn.cli.forget import print_receipt

    base = {k: getattr(receipt(), k) for k in ("request", "roles", "model_in", "model_in_sha256", "out", "unchanged",
                                               "method", "config", "ledger")}
    r = Receipt.of(evidence(verdict), **{**base, **extra})
    print_receipt(UI(), r)
    assert words in " ".join(capsys.readouterr().out.split())
