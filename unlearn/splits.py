"""Splitting records by person: the group of each record, the calibration / verdict halves of held-out sets
and the monitored / judged halves of a forget set (the evidence's roles)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unlearn.errors import InputError

if TYPE_CHECKING:
    from unlearn.data import Record

GROUP_FIELDS = ("group", "person")  # a record's unit: its group, else its person


def group_labels(records: Sequence[Record]) -> list[str] | None:
    """Per-record group (``group`` or ``person`` field) when every record has one, else None."""
    for key in GROUP_FIELDS:
        if all(key in r.meta for r in records):
            return [str(r.meta[key]) for r in records]
    return None


def group_keys(records: Sequence[Record]) -> list[str]:
    """Per-record unit of a split: its group (`group_labels`) when every record has one, else its id."""
    return group_labels(records) or [r.id for r in records]


def split_by_group(records: Sequence[Record], fraction: float = 0.5, seed: int = 0) -> tuple[list[Record],
                                                                                             list[Record]]:
    """(calibration, verdict) halves, whole groups (people) on one side when records carry them."""
    key = group_keys(records)
    groups = sorted(set(key))
    random.Random(seed).shuffle(groups)
    cal = set(groups[: round(fraction * len(groups))])
    return ([r for r, g in zip(records, key, strict=True) if g in cal],
            [r for r, g in zip(records, key, strict=True) if g not in cal])


def split_forget(records: Sequence[Record], seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(monitored, judged): the stopping rule looks at the first, the receipt judges the second, so the records
    a run stopped on are never the ones its verdict rests on (every record is still unlearned). Each person's
    records are halved (the judged half gets the odd one); people of one record, or records without people,
    are halved as whole units. The assignment is a keyed hash of (seed, id): the same record lands on the same
    side in any request that contains it. A single record is both (there is nothing to split)."""
    if len(records) < 2:
        return list(records), list(records)

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()

    labels = group_labels(records)
    people: dict[str, list[int]] = {}
    for i, g in enumerate(labels or [r.id for r in records]):
        people.setdefault(g, []).append(i)
    if all(len(v) == 1 for v in people.values()):  # whole units: half of them monitored
        order = sorted(people, key=rank)
        chosen = {people[g][0] for g in order[: len(order) // 2]}
    else:
        chosen = {i for v in people.values() for i in sorted(v, key=lambda i: rank(records[i].id))[: len(v) // 2]}
    return ([r for i, r in enumerate(records) if i in chosen], [r for i, r in enumerate(records) if i not in chosen])


@dataclass
class Splits:
    """The roles of the records: the stopping rule sees the calibration halves of the held-out and retain
    evaluation sets and the monitored half of the forget set, the receipt's verdict the other halves (every
    forget record is unlearned)."""

    holdout_calibration: list[Record]
    holdout_verdict: list[Record]
    retain_calibration: list[Record]
    retain_verdict: list[Record]
    forget_monitored: list[Record] = field(default_factory=list)
    forget_judged: list[Record] = field(default_factory=list)

    @classmethod
    def of(cls, holdout: Sequence[Record], retain_eval: Sequence[Record], seed: int,
           forget: Sequence[Record] = (), watched: bool = True) -> Splits:
        """``watched`` False: no stopping rule looks at the forget set (exact deletion), every record is judged.
        A holdout that leaves either half empty (fewer than two people, or records) is an `InputError`."""
        halves = split_forget(forget, seed=seed) if watched else ([], list(forget))
        calibration, verdict = split_by_group(holdout, seed=seed)
        if not calibration or not verdict:
            units = len(set(group_keys(holdout)))
            raise InputError(f"{len(holdout)} held-out record(s) of {units} person(s): the stopping rule and the "
                             "receipt's verdict each need held-out people of their own (at least 2 people; 20 or "
                             "more for a verdict with power)", field="holdout")
        return cls(calibration, verdict, *split_by_group(retain_eval, seed=seed), *halves)

    def judged_of(self, records: Sequence[Record]) -> list[Record]:
        """The judged ones among ``records`` (all of them when none is: a request the split did not see)."""
        ids = {r.id for r in records}
        return [r for r in self.forget_judged if r.id in ids] or list(records)

    def roles(self, forget: Sequence[Record]) -> dict[str, list[str]]:
        return {"forget": [r.id for r in forget], **{name: [r.id for r in getattr(self, name)] for name in (
            "forget_monitored", "forget_judged", "holdout_calibration", "holdout_verdict", "retain_calibration",
            "retain_verdict")}}
