"""Record files: JSON Lines, JSON arrays, CSV, parquet and Hugging Face datasets read strictly (one error
line naming file / line / field), field mapping, and writing JSON Lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from unlearn.data.records import Record, parse_record
from unlearn.errors import InputError
from unlearn.jsonio import (
    MAX_DEPTH,
    JsonObject,
    checked_strings,
    iter_json_objects,
    nesting_depth,
    read_bytes,
    show,
    strict_decoder,
)


def iter_json_lines(path: Path) -> Iterator[tuple[int, JsonObject]]:
    return iter_json_objects(path)


def _iter_json_arrays(path: Path, text: str) -> Iterator[tuple[int, JsonObject]]:
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


def _iter_csv(path: Path) -> Iterator[tuple[int, JsonObject]]:
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


def _table_rows(table: Any) -> Iterator[tuple[int, JsonObject]]:
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


def iter_objects(source: str | Path) -> Iterator[tuple[int, JsonObject]]:
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
    return iter_json_lines(path)


def map_fields(obj: JsonObject, fields: Mapping[str, str] | None) -> JsonObject:
    """Rename a source's columns to ours: ``fields`` maps our name (id, text, question, answer, ...) to the
    source's."""
    if not fields:
        return obj
    theirs = set(fields.values())
    out = {k: v for k, v in obj.items() if k not in theirs}
    out.update({ours: obj[src] for ours, src in fields.items() if src in obj})
    return out


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


def write_jsonl(path: str | Path, rows: Iterable[JsonObject]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    tmp.replace(path)
