"""Records, record files, training-data manifests, deletion requests, prompt formats and collation, one
module per concern; every name is importable from ``unlearn.data``.

A record is ``{id, text}`` (plain text, loss on every token) or ``{id, question, answer, ...}``
(QA, loss on answer tokens only). TOFU's field names load as they are; a record without an id
gets a stable content-hash id.

- `unlearn.data.records`: `Record` and its JSON form;
- `unlearn.data.formats`: reading record files (JSON Lines, JSON, CSV, parquet, datasets), writing JSON Lines;
- `unlearn.data.manifest`: manifests and deletion requests;
- `unlearn.data.prompts`: prompt formats and rendering;
- `unlearn.data.collate`: tokenisation, labels and batches.
"""

from unlearn.data.collate import Batch, appends_eos, batches, collate, encode, encode_many, pad_id_of
from unlearn.data.formats import iter_objects, load_records, map_fields, write_jsonl
from unlearn.data.manifest import (
    DeletionRequest,
    ManifestEntry,
    build_manifest,
    check_against_manifest,
    check_holdout,
    load_manifest,
    load_requests,
)
from unlearn.data.prompts import (
    PLAIN,
    QA_TEMPLATE,
    PromptFormat,
    format_of,
    parse_format,
    render,
    set_format,
    special_prefix,
)
from unlearn.data.records import (
    QA_FIELDS,
    Record,
    parse_record,
    qa_record,
    record_to_json,
    subsample,
    text_hash,
    text_record,
    with_answer,
)

__all__ = [
    "PLAIN", "QA_FIELDS", "QA_TEMPLATE", "Batch", "DeletionRequest", "ManifestEntry", "PromptFormat", "Record",
    "appends_eos", "batches", "build_manifest", "check_against_manifest", "check_holdout", "collate", "encode",
    "encode_many", "format_of", "iter_objects", "load_manifest", "load_records", "load_requests", "map_fields",
    "pad_id_of", "parse_format", "parse_record", "qa_record", "record_to_json", "render", "set_format",
    "special_prefix", "subsample", "text_hash", "text_record", "with_answer", "write_jsonl",
]
