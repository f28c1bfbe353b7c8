"""Strict JSON for untrusted files: bytes decoded as UTF-8 line by line, duplicate keys, NaN/Infinity, deep
nesting, oversized lines and numbers refused, and every failure a value (never an exception escaping as a
traceback); plus the escaped, truncated rendering of user-supplied strings in messages."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ForwardRef, TypeAlias, Union

from unlearn.errors import InputError

# A JSON document's values, as the readers return them and the writers take them: narrower than Any (no
# tensors, no arrays, no dataclasses), so a type checker sees what may be written to disk.
_SELF = ForwardRef("Json", module=__name__)  # resolvable from any module (typing.get_type_hints)
Json: TypeAlias = Union[None, bool, int, float, str, list[_SELF], dict[str, _SELF]]  # type: ignore[valid-type]  # noqa: UP007
JsonObject: TypeAlias = dict[str, Json]

MAX_LINE_BYTES = 64 << 20  # one JSON line (a record, a manifest entry, a ledger entry)
MAX_DEPTH = 64


class JSONProblem(ValueError):
    """What is wrong with one line: the message names it (column, key, ...)."""


def show(value: object, limit: int = 60) -> str:
    """A user-supplied string as it may appear in a message: control characters escaped, cut to ``limit``."""
    text = str(value)
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    out: JsonObject = {}
    for k, v in pairs:
        if k in out:
            raise JSONProblem(f"duplicate key '{show(k)}'")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise JSONProblem(f"{name} is not valid JSON")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONProblem(f"number {show(text, 20)} is out of range")
    return value


def checked_strings(obj: Any) -> Any:
    """``obj`` when every string in it (keys too) is encodable text; a lone surrogate (``\\ud800``) is a
    ``JSONProblem`` here, not a crash later in hashing."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONProblem(f"string {show(item)} holds a lone surrogate (not text)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return obj


def strict_decoder() -> json.JSONDecoder:
    """A decoder that refuses duplicate keys, NaN / Infinity and numbers out of float range."""
    return json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def nesting_depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_line(raw: bytes) -> Any:
    """One JSON value from one line of bytes, or ``JSONProblem`` saying why not."""
    if len(raw) > MAX_LINE_BYTES:
        raise JSONProblem(f"line longer than {MAX_LINE_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    if nesting_depth(raw) > MAX_DEPTH:
        raise JSONProblem(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return checked_strings(strict_decoder().decode(text))
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # integers over 4300 digits, pathological nesting
        if isinstance(exc, JSONProblem):
            raise
        raise JSONProblem(f"invalid JSON ({' '.join(str(exc).split())[:120]})") from None


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The whole file, or one ``InputError`` line (missing, not a regular file, over ``limit`` bytes,
    unreadable). Opened without blocking and checked on the open descriptor, so a FIFO or a device swapped in
    cannot hang or flood the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or type(exc).__name__})", file=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError("not a regular file", file=path)
        if limit is not None and st.st_size > limit:
            raise InputError(f"larger than {limit} bytes: not a file of this kind", file=path)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read() if limit is None else fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or type(exc).__name__})", file=path) from None
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise InputError(f"larger than {limit} bytes: not a file of this kind", file=path)
    return data


def read_json(path: Path, limit: int | None = 1 << 20) -> Any:
    """One JSON document from a file (a configuration, an anchor, a journal, a receipt: small, at most
    ``limit`` bytes; None: any size, e.g. a sharded model's record assignment), read with `read_bytes`
    (``InputError``) and parsed as strictly as a JSON line (``JSONProblem``)."""
    return parse_line(read_bytes(path, limit).replace(b"\n", b" "))


def iter_json_objects(path: Path) -> Iterator[tuple[int, JsonObject]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file; the first bad line is an
    ``InputError`` naming the file and line."""
    for line_no, raw in enumerate(read_bytes(path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = parse_line(raw)
        except JSONProblem as exc:
            raise InputError(str(exc), file=path, line=line_no) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line_no)
        yield line_no, obj
