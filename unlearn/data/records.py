"""Records: one training example (`Record`, plain text or QA), its JSON form, stable content ids."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.errors import InputError
from unlearn.jsonio import JsonObject

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


QA_TEMPLATE = "Question: {question}\nAnswer:"
QA_FIELDS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")


@dataclass(frozen=True)
class Record:
    """One training example. ``prompt`` is empty for plain text; the loss is taken on ``response``."""

    id: str
    prompt: str
    response: str
    question: str | None = None
    answer: str | None = None
    meta: JsonObject = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_qa(self) -> bool:
        return self.question is not None

    @property
    def text(self) -> str:
        """The canonical text of the record, what a request by text is matched against."""
        return f"{self.question}\n{self.answer}" if self.is_qa else self.prompt + self.response

    @property
    def paraphrased_answer(self) -> str | None:
        return self.meta.get("paraphrased_answer")

    @property
    def perturbed_answers(self) -> list[str]:
        value = self.meta.get("perturbed_answer") or []
        return [value] if isinstance(value, str) else list(value)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def qa_record(id: str, question: str, answer: str, **meta: Any) -> Record:
    return Record(id=id, prompt=QA_TEMPLATE.format(question=question), response=" " + answer,
                  question=question, answer=answer, meta=meta)


def text_record(id: str, text: str, **meta: Any) -> Record:
    return Record(id=id, prompt="", response=text, meta=meta)


def with_answer(record: Record, answer: str) -> Record:
    """The same QA prompt with another answer (a paraphrased or perturbed one)."""
    return qa_record(record.id, record.question or "", answer)


RISK_FIELD = "deletion_risk"  # a record's flag: its person may well ask to be deleted (`unlearn.sharded.assign`)


def str_field(obj: JsonObject, name: str, path: Path, line: int) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", file=path, line=line, field=name)
    if not value.strip():
        raise InputError("must not be empty", file=path, line=line, field=name)
    return value


def record_id(obj: JsonObject, path: Path, line: int, content: str) -> str:
    if "id" not in obj:
        return "h" + text_hash(content)[:16]
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"must be a string or an integer, got {type(value).__name__}", file=path,
                         line=line, field="id")
    if isinstance(value, int) and abs(value) >= 10**30:
        raise InputError("integer id too large (use a string)", file=path, line=line, field="id")
    value = str(value)
    if not value.strip():
        raise InputError("must not be empty", file=path, line=line, field="id")
    return value


def parse_record(obj: JsonObject, path: Path, line: int) -> Record:
    for name in ("person", "group"):  # units of the verdict's tests: a name or a number, nothing else
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InputError("must be a string or an integer (the person or group the record belongs to)",
                             file=path, line=line, field=name)
    if RISK_FIELD in obj:  # CSV cells are strings: "true" / "false" there
        risk = obj[RISK_FIELD]
        risk = {"true": True, "false": False}.get(risk.strip().lower(), risk) if isinstance(risk, str) else risk
        if not isinstance(risk, bool):
            raise InputError("must be true or false (may this record's person be asked to be deleted: deletion-"
                             "ready training puts them in their shard's last slice)", file=path, line=line,
                             field=RISK_FIELD)
        obj = {**obj, RISK_FIELD: risk}
    if "question" in obj or "answer" in obj:
        for name in ("question", "answer"):
            if name not in obj:
                raise InputError("missing (a QA record needs 'question' and 'answer')", file=path, line=line,
                                 field=name)
        question, answer = str_field(obj, "question", path, line), str_field(obj, "answer", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "question", "answer")}
        perturbed = meta.get("perturbed_answer")
        if perturbed is not None and not (isinstance(perturbed, str) or (
                isinstance(perturbed, list) and all(isinstance(p, str) for p in perturbed))):
            raise InputError("must be a string or a list of strings", file=path, line=line,
                             field="perturbed_answer")
        if "paraphrased_answer" in meta:
            str_field(obj, "paraphrased_answer", path, line)
        return qa_record(record_id(obj, path, line, f"{question}\n{answer}"), question, answer, **meta)
    if "prompt" in obj and "gt" in obj:  # MUSE's verbatim-memorisation files: a prompt and its true continuation
        prompt, gt = str_field(obj, "prompt", path, line), str_field(obj, "gt", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "prompt", "gt")}
        return Record(record_id(obj, path, line, prompt + gt), prompt, gt, meta=meta)
    if "text" in obj:
        text = str_field(obj, "text", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "text")}
        return text_record(record_id(obj, path, line, text), text, **meta)
    raise InputError("record has neither 'text', nor 'question' and 'answer', nor 'prompt' and 'gt'", file=path,
                     line=line)


def record_to_json(record: Record) -> JsonObject:
    if record.is_qa:
        return {"id": record.id, "question": record.question, "answer": record.answer, **record.meta}
    if record.prompt:
        return {"id": record.id, "prompt": record.prompt, "gt": record.response, **record.meta}
    return {"id": record.id, "text": record.response, **record.meta}


def subsample(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """``k`` records drawn without replacement (seeded), or all of them when ``k`` is 0 or too large."""
    return list(records) if k <= 0 or k >= len(records) else random.Random(seed).sample(list(records), k)
