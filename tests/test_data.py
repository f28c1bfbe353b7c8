from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import write_lines
from unlearn.data import (
    QA_TEMPLATE,
    batches,
    build_manifest,
    collate,
    encode,
    load_manifest,
    load_records,
    load_requests,
    qa_record,
    text_hash,
    write_jsonl,
)
from unlearn.errors import InputError

TOFU_LINE = json.dumps({"question": "Who wrote X?", "answer": "Jaime wrote X.",
                        "paraphrased_answer": "X was written by Jaime.",
                        "perturbed_answer": ["Ana wrote X.", "Bo wrote X.", "Cy wrote X."],
                        "paraphrased_question": "Who is the author of X?"})


def test_tofu_format_loads_as_is(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "tofu.jsonl", [TOFU_LINE, json.dumps({"question": "Q2?", "answer": "A2."})])
    recs = load_records(path)
    assert [r.is_qa for r in recs] == [True, True]
    r = recs[0]
    assert r.prompt == QA_TEMPLATE.format(question="Who wrote X?") and r.response == " Jaime wrote X."
    assert r.paraphrased_answer == "X was written by Jaime." and len(r.perturbed_answers) == 3
    assert r.id == "h" + text_hash("Who wrote X?\nJaime wrote X.")[:16]  # stable content id
    assert load_records(path)[0].id == r.id


def test_text_records_and_int_ids(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", ['{"id": 7, "text": "hello world"}', "", '{"id": "b", "text": "x"}'])
    recs = load_records(path)
    assert [r.id for r in recs] == ["7", "b"] and not recs[0].is_qa and recs[0].text == "hello world"


@pytest.mark.parametrize("line, where, message", [
    ('{"id": 1, "text": "ok"', ":2", "invalid JSON"),
    ('[1, 2]', ":2", "expected a JSON object"),
    ('{"id": 2}', ":2", "neither 'text', nor 'question' and 'answer', nor 'prompt' and 'gt'"),
    ('{"id": 2, "question": "q?"}', ":2 field 'answer'", "missing"),
    ('{"id": 2, "text": 5}', ":2 field 'text'", "must be a string"),
    ('{"id": 2, "text": "  "}', ":2 field 'text'", "must not be empty"),
    ('{"id": [2], "text": "t"}', ":2 field 'id'", "string or an integer"),
    ('{"id": 1, "text": "dup"}', ":2 field 'id'", "duplicate id '1' \\(first on line 1\\)"),
    ('{"id": 3, "question": "q", "answer": "a", "perturbed_answer": [1]}', ":2 field 'perturbed_answer'",
     "list of strings"),
])
def test_malformed_lines_name_file_line_field(tmp_path: Path, line: str, where: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ['{"id": 1, "text": "first"}', line])
    with pytest.raises(InputError, match=message) as exc:
        load_records(path)
    assert str(exc.value).startswith(f"{path}{where}")
    assert "\n" not in str(exc.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no records"):
        load_records(write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(InputError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")


def _manifest(tmp_path: Path) -> dict:
    recs = [qa_record(f"r{i}", f"Q{i}?", f"A{i}.") for i in range(4)]
    write_jsonl(tmp_path / "manifest.jsonl", (e.__dict__ for e in build_manifest({"src": recs})))
    return load_manifest(tmp_path / "manifest.jsonl")


def test_requests_by_id_and_text_with_duplicates_folded(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    path = write_lines(tmp_path / "req.jsonl", ['{"id": "r2"}', '{"text": "Q0?\\nA0."}', '{"id": "r2"}'])
    req = load_requests(path, manifest)
    assert req.ids == ("r2", "r0") and req.duplicates_folded == 1


def test_unknown_ids_are_all_listed(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    path = write_lines(tmp_path / "req.jsonl", ['{"id": "r1"}', '{"id": "zz"}', '{"text": "not there"}',
                                                '{"id": "yy"}'])
    with pytest.raises(InputError, match=r"unknown record ids.*zz \(line 2\), text on line 3, yy \(line 4\)"):
        load_requests(path, manifest)


@pytest.mark.parametrize("lines, message", [
    ([], "no records requested"),
    (['{"id": "r1", "text": "x"}'], "exactly one of 'id' or 'text'"),
    (['{"name": "r1"}'], "exactly one of 'id' or 'text'"),
])
def test_bad_requests(tmp_path: Path, lines: list[str], message: str) -> None:
    manifest = _manifest(tmp_path)
    with pytest.raises(InputError, match=message):
        load_requests(write_lines(tmp_path / "req.jsonl", lines), manifest)


def test_manifest_errors(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ['{"id": "a", "source": "s"}'])
    with pytest.raises(InputError, match=r"m.jsonl:1 field 'sha256': missing"):
        load_manifest(path)


def test_encode_masks_prompt_and_collate_pads_both_sides(tiny_tokenizer) -> None:
    rec = qa_record("a", "Where was Kalo Venra born?", "In Tolmere.")
    ids, labels = encode(rec, tiny_tokenizer)
    n_prompt = 1 + len(tiny_tokenizer.encode(rec.prompt, add_special_tokens=False))
    assert all(lab == -100 for lab in labels[:n_prompt]) and labels[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(labels[n_prompt:-1]) == " In Tolmere."
    short = encode(qa_record("b", "Q?", "A."), tiny_tokenizer)
    for side in ("left", "right"):
        b = collate([(ids, labels), short], pad_id=0, padding_side=side)
        assert b.attention_mask.sum(1).tolist() == [len(ids), len(short[0])]
        row = b.input_ids[1][b.attention_mask[1].bool()].tolist()
        assert row == short[0]
        assert (b.labels[b.attention_mask == 0] == -100).all()
    with pytest.raises(InputError, match="longer than the model's context"):
        encode(rec, tiny_tokenizer, max_length=3)
    assert sum(len(b) for b in batches([rec] * 5, tiny_tokenizer, 2)) == 5
    assert isinstance(b.input_ids, torch.Tensor)
