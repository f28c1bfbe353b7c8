"""Records, training-data manifests, deletion requests and collation.

A record is ``{id, text}`` (plain text, loss on every token) or ``{id, question, answer, ...}``
(QA, loss on answer tokens only). TOFU's field names load as they are; a record without an id
gets a stable content-hash id.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.errors import InputError
from unlearn.jsonio import (
    MAX_DEPTH,
    checked_strings,
    iter_json_objects,
    nesting_depth,
    read_bytes,
    show,
    strict_decoder,
)

QA_TEMPLATE = "Question: {question}\nAnswer:"
_SHA256 = re.compile(r"[0-9a-f]{64}")
QA_FIELDS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")


@dataclass(frozen=True)
class Record:
    """One training example. ``prompt`` is empty for plain text; the loss is taken on ``response``."""

    id: str
    prompt: str
    response: str
    question: str | None = None
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

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


def _str_field(obj: dict[str, Any], name: str, path: Path, line: int) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", file=path, line=line, field=name)
    if not value.strip():
        raise InputError("must not be empty", file=path, line=line, field=name)
    return value


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return iter_json_objects(path)


def _iter_json_arrays(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON array, or of several arrays written one after another (TOFU's files); the number is
    the line where each object starts. Strict as JSON Lines: one comma between elements, duplicate keys, NaN,
    Infinity, out-of-range numbers, lone surrogates and nesting deeper than 64 levels refused."""
    if nesting_depth(text.encode("utf-8", "surrogatepass")) > MAX_DEPTH + 1:
        raise InputError(f"nested more than {MAX_DEPTH} levels deep", file=path)
    decoder, pos = strict_decoder(), _skip_space(text, 0)
    while pos < len(text):
        if text[pos] != "[":
            raise InputError("expected a JSON array", file=path, line=text.count("\n", 0, pos) + 1)
        pos = _skip_space(text, pos + 1)
        first = True
        while True:
            if pos >= len(text):
                raise InputError("unterminated JSON array", file=path, line=text.count("\n") + 1)
            if text[pos] == "]":
                pos = _skip_space(text, pos + 1)
                break
            line = text.count("\n", 0, pos) + 1
            if not first:
                if text[pos] != ",":
                    raise InputError("expected ',' or ']' between array elements", file=path, line=line)
                pos = _skip_space(text, pos + 1)
                line = text.count("\n", 0, pos) + 1
                if pos >= len(text):
                    raise InputError("unterminated JSON array", file=path, line=line)
            try:
                obj, pos = decoder.raw_decode(text, pos)
                checked_strings(obj)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON ({exc.msg})", file=path, line=exc.lineno) from None
            except (ValueError, RecursionError) as exc:  # JSONProblem, integers over 4300 digits
                raise InputError(f"invalid JSON ({' '.join(str(exc).split())[:120]})", file=path, line=line) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line)
            first = False
            pos = _skip_space(text, pos)
            yield line, obj


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import csv
    import io

    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", file=path,
                         line=raw.count(b"\n", 0, exc.start) + 1) from None
    if "\0" in text:
        raise InputError("holds a NUL character: not a CSV text file", file=path, line=text.count("\n", 0,
                                                                                                  text.index("\0")) + 1)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row:
                raise InputError("more cells than header columns", file=path, line=reader.line_num)
            yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}
    except csv.Error as exc:
        raise InputError(f"invalid CSV ({exc})", file=path, line=reader.line_num) from None


def _table_rows(table: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, row in enumerate(table.to_pylist() if hasattr(table, "to_pylist") else table, start=1):
        yield i, {k: v for k, v in row.items() if v is not None}


def _optional(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"reading {what} needs the '{module.split('.')[0]}' package: pip install 'unlearn[data]'") \
            from None


_HF_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+){0,2}$")


def iter_objects(source: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line or row number, object)`` of every record in a data file, by its form: JSON Lines, a JSON array
    (or concatenated arrays), CSV, parquet, a Hugging Face ``datasets`` directory (``save_to_disk``), or a
    hub dataset ``org/name[:config[:split]]`` loaded through the ``datasets`` cache."""
    path = Path(source)
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json")):
        ds = _optional("datasets", "a saved Hugging Face dataset").load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: one split must be named
            raise InputError(f"a dataset with splits {', '.join(ds.keys())}: name one (DIR/SPLIT)", file=path)
        return _table_rows(ds)
    if not path.exists() and isinstance(source, str) and _HF_DATASET.match(source):
        name, _, rest = source.partition(":")
        config, _, split = rest.partition(":")
        datasets = _optional("datasets", "a hub dataset")
        try:
            ds = datasets.load_dataset(name, config or None, split=split or "train")
        except Exception as exc:
            raise InputError(f"cannot load the dataset ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                             file=source) from None
        return _table_rows(ds)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pq = _optional("pyarrow.parquet", "parquet")
        read_bytes(path)  # the same errors as any file (missing, a directory)
        try:
            return _table_rows(pq.read_table(path))
        except Exception as exc:
            raise InputError(f"not a readable parquet file ({type(exc).__name__})", file=path) from None
    if suffix == ".csv":
        return _iter_csv(path)
    if suffix == ".json":
        raw = read_bytes(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"not valid UTF-8 (byte offset {exc.start})", file=path) from None
        if text.lstrip().startswith("["):
            return _iter_json_arrays(path, text)
    return _iter_json_lines(path)


def map_fields(obj: dict[str, Any], fields: Mapping[str, str] | None) -> dict[str, Any]:
    """Rename a source's columns to ours: ``fields`` maps our name (id, text, question, answer, ...) to the
    source's."""
    if not fields:
        return obj
    theirs = set(fields.values())
    out = {k: v for k, v in obj.items() if k not in theirs}
    out.update({ours: obj[src] for ours, src in fields.items() if src in obj})
    return out


def _record_id(obj: dict[str, Any], path: Path, line: int, content: str) -> str:
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


def parse_record(obj: dict[str, Any], path: Path, line: int) -> Record:
    for name in ("person", "group"):  # units of the verdict's tests: a name or a number, nothing else
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InputError("must be a string or an integer (the person or group the record belongs to)",
                             file=path, line=line, field=name)
    if "question" in obj or "answer" in obj:
        for name in ("question", "answer"):
            if name not in obj:
                raise InputError("missing (a QA record needs 'question' and 'answer')", file=path, line=line,
                                 field=name)
        question, answer = _str_field(obj, "question", path, line), _str_field(obj, "answer", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "question", "answer")}
        perturbed = meta.get("perturbed_answer")
        if perturbed is not None and not (isinstance(perturbed, str) or (
                isinstance(perturbed, list) and all(isinstance(p, str) for p in perturbed))):
            raise InputError("must be a string or a list of strings", file=path, line=line,
                             field="perturbed_answer")
        if "paraphrased_answer" in meta:
            _str_field(obj, "paraphrased_answer", path, line)
        return qa_record(_record_id(obj, path, line, f"{question}\n{answer}"), question, answer, **meta)
    if "prompt" in obj and "gt" in obj:  # MUSE's verbatim-memorisation files: a prompt and its true continuation
        prompt, gt = _str_field(obj, "prompt", path, line), _str_field(obj, "gt", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "prompt", "gt")}
        return Record(_record_id(obj, path, line, prompt + gt), prompt, gt, meta=meta)
    if "text" in obj:
        text = _str_field(obj, "text", path, line)
        meta = {k: v for k, v in obj.items() if k not in ("id", "text")}
        return text_record(_record_id(obj, path, line, text), text, **meta)
    raise InputError("record has neither 'text', nor 'question' and 'answer', nor 'prompt' and 'gt'", file=path,
                     line=line)


def load_records(path: str | Path, *, allow_empty: bool = False,
                 fields: Mapping[str, str] | None = None) -> list[Record]:
    """Load records from any form ``iter_objects`` reads (JSONL by default); ``fields`` renames columns (ours ->
    theirs). Any bad row raises an `InputError` naming file, line (or row) and field."""
    where: str | Path = path
    path = Path(path)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line_no, obj in iter_objects(where):
        record = parse_record(map_fields(obj, fields), path, line_no)
        if record.id in seen:
            raise InputError(f"duplicate id '{show(record.id)}' (first on line {seen[record.id]})", file=path,
                             line=line_no, field="id")
        seen[record.id] = line_no
        records.append(record)
    if not records and not allow_empty:
        raise InputError("no records (the file is empty)", file=path)
    return records


def record_to_json(record: Record) -> dict[str, Any]:
    if record.is_qa:
        return {"id": record.id, "question": record.question, "answer": record.answer, **record.meta}
    if record.prompt:
        return {"id": record.id, "prompt": record.prompt, "gt": record.response, **record.meta}
    return {"id": record.id, "text": record.response, **record.meta}


def subsample(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """``k`` records drawn without replacement (seeded), or all of them when ``k`` is 0 or too large."""
    return list(records) if k <= 0 or k >= len(records) else random.Random(seed).sample(list(records), k)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- manifest and requests


@dataclass(frozen=True)
class ManifestEntry:
    id: str
    source: str
    sha256: str


def build_manifest(records_by_source: dict[str, Sequence[Record]]) -> list[ManifestEntry]:
    return [ManifestEntry(r.id, source, text_hash(r.text))
            for source, records in records_by_source.items() for r in records]


def load_manifest(path: str | Path) -> dict[str, ManifestEntry]:
    """A training-data manifest: JSONL lines ``{id, source, sha256}``; returns entries by id."""
    path = Path(path)
    entries: dict[str, ManifestEntry] = {}
    for line_no, obj in _iter_json_lines(path):
        for name in ("id", "source", "sha256"):
            if name not in obj:
                raise InputError("missing", file=path, line=line_no, field=name)
        rid = _record_id(obj, path, line_no, "")
        if rid in entries:
            raise InputError(f"duplicate id '{show(rid)}'", file=path, line=line_no, field="id")
        digest = _str_field(obj, "sha256", path, line_no)
        if not _SHA256.fullmatch(digest):
            raise InputError(f"must be 64 lowercase hex digits, got '{show(digest)}'", file=path, line=line_no,
                             field="sha256")
        entries[rid] = ManifestEntry(rid, _str_field(obj, "source", path, line_no), digest)
    if not entries:
        raise InputError("no entries (the manifest is empty)", file=path)
    return entries


def check_against_manifest(records: Sequence[Record], manifest: dict[str, ManifestEntry], file: str | Path) -> None:
    """Every training record must be in the manifest with the text the manifest hashed."""
    missing = [r.id for r in records if r.id not in manifest]
    if missing:
        raise InputError(f"{len(missing)} record id(s) are not in the training manifest, e.g. '{show(missing[0])}'",
                         file=file)
    for r in records:
        if text_hash(r.text) != manifest[r.id].sha256:
            raise InputError(f"record '{show(r.id)}' differs from the text the manifest hashed (sha256 mismatch): "
                             "the data file is not the training data", file=file)


def check_holdout(holdout: Sequence[Record], manifest: dict[str, ManifestEntry], file: str | Path) -> None:
    """Non-members must not be training members, by id or by text."""
    hashes = {e.sha256 for e in manifest.values()}
    for r in holdout:
        if r.id in manifest or text_hash(r.text) in hashes:
            raise InputError(f"holdout record '{show(r.id)}' is a training member (its id or text is in the "
                             "manifest): holdout records must never have been trained on", file=file)


@dataclass(frozen=True)
class DeletionRequest:
    """Validated record ids to delete, in request order, duplicates folded."""

    ids: tuple[str, ...]
    duplicates_folded: int
    source_file: str


def load_requests(path: str | Path, manifest: dict[str, ManifestEntry]) -> DeletionRequest:
    """Read a deletion-request JSONL (each line ``{"id": ...}`` or ``{"text": ...}``).

    Texts are matched to ids through the manifest's sha256. Unknown ids are all listed in one error.
    """
    path = Path(path)
    by_hash = {e.sha256: e.id for e in manifest.values()}
    ids: list[str] = []
    unknown: list[str] = []
    folded = 0
    for line_no, obj in _iter_json_lines(path):
        has_id, has_text = "id" in obj, "text" in obj
        if has_id == has_text:
            raise InputError("a request line needs exactly one of 'id' or 'text'", file=path, line=line_no)
        if has_id:
            rid = _record_id(obj, path, line_no, "")
            if rid not in manifest:
                unknown.append(f"{show(rid)} (line {line_no})")
                continue
        else:
            text = _str_field(obj, "text", path, line_no)
            rid = by_hash.get(text_hash(text), "")
            if not rid:
                unknown.append(f"text on line {line_no}")
                continue
        if rid in ids:
            folded += 1
        else:
            ids.append(rid)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise InputError(f"unknown record ids, not in the training manifest: {shown}", file=path)
    if not ids:
        raise InputError("no records requested (the forget set would be empty)", file=path)
    return DeletionRequest(tuple(ids), folded, str(path))


# ---------------------------------------------------------------- tokenisation and collation


@dataclass
class Batch:
    """Token ids ``[B, T]``, attention mask ``[B, T]`` and labels ``[B, T]`` (-100 = no loss)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, rows: slice) -> Batch:
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])


@dataclass(frozen=True)
class PromptFormat:
    """How a QA record becomes model input; the same for unlearning, scoring and generation.

    ``plain``: ``Question: {question}\nAnswer:`` then `` {answer}`` + EOS (the built-in benchmark's format);
    ``chat``: the tokenizer's own chat template, the question as the user turn (after ``system`` when
    given) and the answer as the assistant turn, the loss on the assistant turn only (the answer and the
    template's end-of-turn tokens); ``custom``: the ``prompt`` / ``response`` format strings + EOS. Plain-text
    and MUSE prompt/continuation records are scored as they are under every format."""

    kind: str = "plain"
    prompt: str = QA_TEMPLATE
    response: str = " {answer}"
    system: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"prompt": self.prompt, "response": self.response} if self.kind == "custom"
                                      else {}), **({"system": self.system} if self.system else {})}


PLAIN = PromptFormat()


def parse_format(spec: str | Path | None) -> PromptFormat:
    """``plain`` (default), ``chat``, a format string with ``{question}`` (the answer follows as `` {answer}``),
    or a yaml file with ``kind`` / ``prompt`` / ``response`` / ``system``."""
    if spec is None or str(spec) == "plain":
        return PLAIN
    if str(spec) == "chat":
        return PromptFormat("chat")
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        from unlearn.config import read_yaml_mapping

        data = read_yaml_mapping(path)
        unknown = set(data) - {"kind", "prompt", "response", "system"}
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(sorted(unknown))} (kind, prompt, response, system)", file=path)
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise InputError(f"key(s) {', '.join(sorted(bad))} must be strings", file=path)
        if data.get("kind") == "custom" and "prompt" not in data:
            raise InputError("kind custom needs a prompt (with {question})", file=path)
        fmt = PromptFormat(**{"kind": "custom" if "prompt" in data else "chat", **data})
    elif "{" in str(spec):
        fmt = PromptFormat("custom", prompt=str(spec))
    else:
        raise InputError(f"template must be plain, chat, a format string with {{question}} or a yaml file, got "
                         f"{show(str(spec))}", field="template")
    if fmt.kind not in ("plain", "chat", "custom"):
        raise InputError(f"kind must be plain, chat or custom, got {show(fmt.kind)}", field="template")
    if fmt.kind == "custom":
        _check_placeholders(fmt.prompt, "question", "prompt")
        _check_placeholders(fmt.response, "answer", "response")
    return fmt


def _check_placeholders(text: str, name: str, part: str) -> None:
    """``text`` holds ``{name}`` and no other replacement field: no other name, index, attribute, conversion or
    format spec (a template is data, not code), braces balanced (``{{``/``}}`` for literal ones)."""
    import string

    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise InputError(f"template {part} {show(text)}: {exc}", field="template") from None
    wrong = [f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") for f, conv, spec in fields
             if f != name or conv or spec]
    if wrong or not fields:
        raise InputError(f"template {part} {show(text)} must hold {{{name}}} and no other field (got "
                         f"{', '.join('{' + w + '}' for w in wrong) or 'none'}; the {part} "
                         f"{'is followed by the answer' if part == 'prompt' else 'follows the prompt'})",
                         field="template")


def set_format(tokenizer: Any, fmt: PromptFormat) -> None:
    """Every encoding and generation with ``tokenizer`` uses ``fmt`` from now on."""
    if fmt.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InputError("template 'chat': this tokenizer has no chat template", field="template")
    tokenizer.unlearn_format = fmt


def format_of(tokenizer: Any) -> PromptFormat:
    return getattr(tokenizer, "unlearn_format", PLAIN)


def render(record: Record, tokenizer: Any, fmt: PromptFormat | None = None) -> tuple[str, str, bool]:
    """(prompt text, response text, formatted by a chat template) of ``record`` under the tokenizer's format."""
    fmt = fmt or format_of(tokenizer)
    if not record.is_qa or fmt.kind == "plain":
        return record.prompt, record.response, False
    if fmt.kind == "custom":
        return fmt.prompt.format(question=record.question), fmt.response.format(answer=record.answer), False
    turns = [{"role": "system", "content": fmt.system}] if fmt.system else []
    turns.append({"role": "user", "content": record.question})
    prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": record.answer}], tokenize=False)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise InputError(f"record '{show(record.id)}': the chat template does not render the answer after the "
                         "generation prompt; use --template plain or a custom format")
    return prompt, full[len(prompt):], True


def special_prefix(tokenizer: Any) -> list[int]:
    """The tokens the tokenizer itself puts before a text (``add_special_tokens=True``): its BOS when it adds
    one, nothing when it does not (never a forced BOS: some tokenizers' ``bos_token`` is a chat-role token
    they never prepend)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i])
    return []


def encode_many(records: Sequence[Record], tokenizer: Any,
                max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per record: the tokenizer's own prefix (BOS when it adds one) + prompt (masked) +
    response + EOS (labelled, QA only).

    Prompt and response are tokenised separately so the loss boundary is exact; one batched
    tokenizer call each.
    """
    if not records:
        return []
    fmt = format_of(tokenizer)
    rendered = [render(r, tokenizer, fmt) for r in records]
    prompts = tokenizer([p for p, _, _ in rendered], add_special_tokens=False)["input_ids"]
    responses = tokenizer([a for _, a, _ in rendered], add_special_tokens=False)["input_ids"]
    prefix = special_prefix(tokenizer)
    out = []
    for record, (prompt, _, chat), prompt_ids, response_ids in zip(records, rendered, prompts, responses):
        if not prompt:
            prompt_ids = []
        if not response_ids:
            raise InputError(f"record '{show(record.id)}' has no tokens to score")
        bos = [] if chat else prefix  # a chat template writes its own BOS
        eos = [tokenizer.eos_token_id] if appends_eos(record, tokenizer, chat) else []
        ids = bos + prompt_ids + response_ids + eos
        if max_length is not None and len(ids) > max_length:
            raise InputError(f"record '{show(record.id)}' is {len(ids)} tokens, longer than the model's context "
                             f"({max_length}); shorten it or raise --max-length")
        out.append((ids, [-100] * (len(bos) + len(prompt_ids)) + response_ids + eos))
    return out


def appends_eos(record: Record, tokenizer: Any, chat: bool) -> bool:
    """QA answers end with the tokenizer's EOS, except under a chat template (its end-of-turn tokens)."""
    return record.is_qa and not chat and tokenizer.eos_token_id is not None


def encode(record: Record, tokenizer: Any, max_length: int | None = None) -> tuple[list[int], list[int]]:
    return encode_many([record], tokenizer, max_length)[0]


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad a list of ``(ids, labels)`` to one batch; padding is masked out and never labelled."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        input_ids[row, sl] = torch.tensor(ids)
        labels[row, sl] = torch.tensor(labs)
        mask[row, sl] = 1
    return Batch(input_ids, mask, labels)


def pad_id_of(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def batches(records: Sequence[Record], tokenizer: Any, batch_size: int, *, max_length: int | None = None,
            padding_side: str = "right") -> Iterator[Batch]:
    """Stream records as padded batches, in order."""
    pad = pad_id_of(tokenizer)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        yield collate(encode_many(chunk, tokenizer, max_length), pad, padding_side)
