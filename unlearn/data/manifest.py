"""Training-data manifests (id, source, content hash) and deletion requests validated against them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearn.data.formats import iter_json_lines
from unlearn.data.records import SHA256_HEX, Record, record_id, str_field, text_hash
from unlearn.errors import InputError
from unlearn.jsonio import show


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
    for line_no, obj in iter_json_lines(path):
        for name in ("id", "source", "sha256"):
            if name not in obj:
                raise InputError("missing", file=path, line=line_no, field=name)
        rid = record_id(obj, path, line_no, "")
        if rid in entries:
            raise InputError(f"duplicate id '{show(rid)}'", file=path, line=line_no, field="id")
        digest = str_field(obj, "sha256", path, line_no)
        if not SHA256_HEX.fullmatch(digest):
            raise InputError(f"must be 64 lowercase hex digits, got '{show(digest)}'", file=path, line=line_no,
                             field="sha256")
        entries[rid] = ManifestEntry(rid, str_field(obj, "source", path, line_no), digest)
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
    for line_no, obj in iter_json_lines(path):
        has_id, has_text = "id" in obj, "text" in obj
        if has_id == has_text:
            raise InputError("a request line needs exactly one of 'id' or 'text'", file=path, line=line_no)
        if has_id:
            rid = record_id(obj, path, line_no, "")
            if rid not in manifest:
                unknown.append(f"{show(rid)} (line {line_no})")
                continue
        else:
            text = str_field(obj, "text", path, line_no)
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
