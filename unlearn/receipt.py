"""The deletion receipt: one typed definition for `unlearn forget`, exact deletion and the requests queue,
written as ``unlearn_receipt.json`` (`Receipt.to_dict`, flat and versioned by ``schema``) and read back by
`Receipt.from_dict`. The attack battery's own report stays JSON (`battery`): it is the battery's
`to_dict`, read by people and by `unlearn ledger`'s tooling as is."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from unlearn.errors import InputError
from unlearn.jsonio import Json, JsonObject

SCHEMA = 1  # bumped when a field changes meaning; `from_dict` refuses other versions


@dataclass(frozen=True)
class LossCheck:
    """The LOSS check of a receipt (before and after): AUC and one-sided Mann-Whitney p of forget vs held-out,
    the forget set's mean NLL, and retain utility (mean answer probability) when retain records were given."""

    forget_auc: float
    forget_p: float
    forget_nll: float
    retain_prob: float | None = None


@dataclass(frozen=True)
class RequestInfo:
    label: str
    ids: list[str]
    file: str | None = None
    duplicates_folded: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    """A run on a LoRA adapter: the adapter read (JSON key ``in``), the base weights' hash, what was written."""

    input: str | None
    base_sha256: str
    output: str  # "adapter" or "merged model"


@dataclass(frozen=True)
class ExactInfo:
    """Exact deletion from a sharded model: the shards retrained and from which slice, and the cost."""

    retrained: dict[str, int]
    retrain_cost: int
    cost_relative_to_sharded_training: float


@dataclass(frozen=True)
class VersionInfo:
    """A requests-queue version: its number and parent, and every answered request's verdict under it."""

    version: int
    parent: int | None
    strategy: str
    requests: list[str]
    cumulative_requests: list[str]
    request_verdicts: dict[str, str]
    repaired: list[str]


@dataclass(frozen=True)
class LedgerRef:
    path: str
    entry_hash: str | None = None


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What an unlearning run and its audit showed, on the verdict halves (`unlearn.workflows.forget.judge`)."""

    steps: int
    stop_reason: str
    stop_message: str
    verdict: str
    verdict_message: str
    battery: JsonObject  # the attack battery's report (`BatteryResult.to_dict`)
    wall_seconds: float
    battery_seconds: float
    peak_memory_mb: float | None
    peak_memory_kind: str | None
    before: LossCheck
    after: LossCheck
    history: list[JsonObject]  # the stopping rule's checks
    method_stats: JsonObject
    retain_utility_relative: float
    privleak_vs_retain: float | None = None


@dataclass(frozen=True, kw_only=True)
class Receipt(Evidence):
    """A deletion request's receipt: the request, the roles of the records, the weights in and out, the method
    and its resolved configuration, the evidence, and (after the commit) the ledger entry."""

    request: RequestInfo
    roles: dict[str, list[str]]
    model_in: str
    model_in_sha256: str
    out: str
    unchanged: bool
    method: str
    config: JsonObject
    sets: dict[str, int] | None = None
    template: JsonObject | None = None
    special_prefix: list[int] | None = None
    adapter: AdapterInfo | None = None
    retain_model: str | None = None
    exact: ExactInfo | None = None
    version: VersionInfo | None = None
    ledger: LedgerRef | None = None
    schema: int = SCHEMA

    FLAT: ClassVar[tuple[str, ...]] = ("exact", "version")  # sections written at the top level of the JSON

    @classmethod
    def of(cls, evidence: Evidence, **fields: Any) -> Receipt:
        return cls(**{f.name: getattr(evidence, f.name) for f in dataclasses.fields(Evidence)}, **fields)

    @property
    def entry_hash(self) -> str:
        """The ledger entry's hash ("" before the commit)."""
        return self.ledger.entry_hash or "" if self.ledger else ""

    @property
    def removed(self) -> bool:
        """Whether the verdict is REMOVED (the only one that says the data is gone)."""
        return self.verdict == "REMOVED"

    def with_ledger(self, ledger: LedgerRef) -> Receipt:
        return dataclasses.replace(self, ledger=ledger)

    def to_dict(self) -> JsonObject:
        out: JsonObject = {"schema": self.schema}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schema":
                continue
            if f.name in self.FLAT:  # exact: true plus its fields; a version's fields at the top level
                if f.name == "exact":
                    out["exact"] = value is not None
                if value is not None:
                    out.update(_plain(value))
            else:
                out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Json]) -> Receipt:
        """A receipt read back from its JSON; an unknown schema or a missing field is one `InputError`."""
        if data.get("schema") != SCHEMA:
            raise InputError(f"receipt schema {data.get('schema')!r} is not {SCHEMA}", field="schema")
        d = dict(data)
        try:
            made: dict[str, Any] = {
                "exact": _make(ExactInfo, d) if d.pop("exact", False) else None,
                "version": _make(VersionInfo, d) if "version" in d else None,
                "request": RequestInfo(**_obj(d.pop("request"))),
                "before": LossCheck(**_obj(d.pop("before"))), "after": LossCheck(**_obj(d.pop("after"))),
                "adapter": _adapter(d.pop("adapter", None)),
                "ledger": LedgerRef(**_obj(led)) if (led := d.pop("ledger", None)) else None}
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in names and k not in made}, **made)
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a receipt: {exc}") from None


def _plain(value: object) -> Json:
    """A field as JSON: dataclasses by their fields (an adapter's ``input`` as ``in``), the rest as is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        d = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {("in" if k == "input" else k): v for k, v in d.items()} if isinstance(value, AdapterInfo) else d
    return value  # type: ignore[return-value]


def _obj(value: Json) -> JsonObject:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {type(value).__name__}")
    return value


def _make(cls: Any, d: dict[str, Json]) -> Any:
    """A flat section's dataclass from the keys it owns (removed from ``d``)."""
    return cls(**{f.name: d.pop(f.name) for f in dataclasses.fields(cls)})


def _adapter(value: Json) -> AdapterInfo | None:
    if value is None:
        return None
    d = _obj(value)
    return AdapterInfo(d.get("in"), d["base_sha256"], d["output"])
