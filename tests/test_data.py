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


QA_ROWS = [{"id": "q1", "question": "Where was Kalo born?", "answer": "In Tolmere.",
            "perturbed_answer": ["In Vask.", "In Oro."]},
           {"id": "q2", "question": "What pet does Mira keep?", "answer": "A parrot."},
           {"id": "t3", "text": "A plain text record, comma, \"quoted\"."}]


def _same(records: list, expected: list) -> None:
    assert [(r.id, r.text, r.perturbed_answers) for r in records] == [(r.id, r.text, r.perturbed_answers)
                                                                      for r in expected]


def test_every_published_form_loads_the_same_records(tmp_path: Path) -> None:
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_lines(tmp_path / "r.jsonl", [json.dumps(r) for r in QA_ROWS])
    expected = load_records(jsonl)
    (tmp_path / "array.json").write_text(json.dumps(QA_ROWS, indent=2))
    _same(load_records(tmp_path / "array.json"), expected)
    # TOFU's files: several arrays written one after another
    (tmp_path / "concat.json").write_text(json.dumps(QA_ROWS[:1]) + "\n" + json.dumps(QA_ROWS[1:], indent=1))
    _same(load_records(tmp_path / "concat.json"), expected)
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))  # JSON Lines named .json
    _same(load_records(tmp_path / "lines.json"), expected)
    flat = [{k: v for k, v in r.items() if k != "perturbed_answer"} for r in QA_ROWS]
    with (tmp_path / "r.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["id", "question", "answer", "text"])
        writer.writeheader()
        writer.writerows(flat)
    flat_expected = load_records(write_lines(tmp_path / "flat.jsonl", [json.dumps(r) for r in flat]))
    _same(load_records(tmp_path / "r.csv"), flat_expected)
    qa = QA_ROWS[:2]
    qa_expected = load_records(write_lines(tmp_path / "qa.jsonl", [json.dumps(r) for r in qa]))
    pq.write_table(pa.Table.from_pylist([{**r, "perturbed_answer": r.get("perturbed_answer", [])} for r in qa]),
                   tmp_path / "r.parquet")
    parquet = load_records(tmp_path / "r.parquet")
    assert [(r.id, r.text) for r in parquet] == [(r.id, r.text) for r in qa_expected]
    assert parquet[0].perturbed_answers == ["In Vask.", "In Oro."]
    datasets.Dataset.from_list(flat[:2]).save_to_disk(str(tmp_path / "ds"))
    _same(load_records(tmp_path / "ds"), [r for r in flat_expected][:2])
    datasets.DatasetDict({"forget": datasets.Dataset.from_list(flat[:2])}).save_to_disk(str(tmp_path / "dd"))
    _same(load_records(tmp_path / "dd" / "forget"), flat_expected[:2])
    with pytest.raises(InputError, match="splits forget: name one"):
        load_records(tmp_path / "dd")
    # columns under other names
    renamed = [{"uid": r["id"], "prompt": r["question"], "completion": r["answer"]} for r in qa]
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    mapped = load_records(tmp_path / "renamed.json", fields={"id": "uid", "question": "prompt", "answer": "completion"})
    assert [(r.id, r.text) for r in mapped] == [(r.id, r.text) for r in qa_expected]


def test_bad_rows_in_every_form_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[\n {"id": "a", "text": "x"},\n {"id": "b", "question": 3, "answer": "y"}\n]')
    with pytest.raises(InputError, match=r"bad.json:3 field 'question': must be a string"):
        load_records(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('[{"id": "a", "text": "x"},')
    with pytest.raises(InputError, match="cut.json.*unterminated"):
        load_records(tmp_path / "cut.json")
    (tmp_path / "bad.csv").write_text("id,question,answer\nq1,Where?,There\nq2,What?\n")
    with pytest.raises(InputError, match=r"bad.csv:3 field 'answer': missing"):
        load_records(tmp_path / "bad.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable parquet file"):
        load_records(tmp_path / "bad.parquet")


def test_special_tokens_are_the_tokenizers_own_never_a_forced_bos(tiny_tokenizer) -> None:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from unlearn.data import encode_many, qa_record, special_prefix

    rec = qa_record("q", "Where was Kalo Venra born?", "Tolmere.")
    plain = tiny_tokenizer(rec.prompt, add_special_tokens=False)["input_ids"]
    assert special_prefix(tiny_tokenizer) == [tiny_tokenizer.bos_token_id]  # it adds its BOS: we keep it
    assert encode_many([rec], tiny_tokenizer)[0][0][: 1 + len(plain)] == [tiny_tokenizer.bos_token_id, *plain]
    # a chat tokenizer whose bos_token is a role token it never prepends (SmolLM's <|im_start|>)
    backend = tiny_tokenizer.backend_tokenizer.__class__.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    chat = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert chat("x")["input_ids"] == chat("x", add_special_tokens=False)["input_ids"]
    assert special_prefix(chat) == []
    ids, labels = encode_many([rec], chat)[0]
    assert ids[: len(plain)] == plain and chat.bos_token_id not in ids


STRICT_CASES = {
    "nan.json": ('[{"question": "q", "answer": NaN}]', "NaN is not valid JSON"),
    "inf.json": ('[{"question": "q", "answer": "a", "x": 1e999}]', "out of range"),
    "dup.json": ('[{"question": "q", "question": "r", "answer": "a"}]', "duplicate key 'question'"),
    "nocomma.json": ('[{"question": "q", "answer": "a"}{"question": "r", "answer": "b"}]', "expected ','"),
    "commas.json": ('[,{"question": "q", "answer": "a"},,]', "invalid JSON"),
    "surrogate.json": ('[{"question": "\\ud800", "answer": "a"}]', "lone surrogate"),
    "deep.json": ("[" + '{"a":' * 100 + "1" + "}" * 100 + "]", "nested more than 64"),
    "bigint.json": ('[{"question": "q", "answer": "a", "n": ' + "9" * 5000 + "}]", "4300 digits"),
    "surrogate.jsonl": ('{"question": "\\ud800", "answer": "a"}\n', "lone surrogate"),
    "inf.jsonl": ('{"question": "q", "answer": "a", "x": -1e999}\n', "out of range"),
    "utf8.csv": (b"question,answer\nq,\xff\n", "not valid UTF-8"),
    "nul.csv": ("question,answer\nq,a\x00b\n", "NUL"),
    "huge.csv": ("question,answer\nq," + '"' + "x" * 200000 + '"\n', "invalid CSV"),
}


@pytest.mark.parametrize("name", sorted(STRICT_CASES))
def test_every_reader_is_as_strict_as_json_lines(name: str, tmp_path: Path) -> None:
    body, message = STRICT_CASES[name]
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    with pytest.raises(InputError, match=message) as err:
        load_records(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_arrays_one_after_another_and_cr_only_csv_still_read(tmp_path: Path) -> None:
    arrays = tmp_path / "tofu.json"
    arrays.write_text('[{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"}]\n'
                      '[{"question": "s", "answer": "c"}]')
    assert [r.answer for r in load_records(arrays)] == ["a", "b", "c"]
    cr = tmp_path / "cr.csv"
    cr.write_bytes(b"question,answer\rq,a\r")
    assert [r.answer for r in load_records(cr)] == ["a"]


@pytest.mark.parametrize("value", [{"a": 1}, [1], True, 1.5])
def test_a_person_or_group_must_be_a_name_or_a_number(value, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a", "group": value}) + "\n")
    with pytest.raises(InputError, match="r.jsonl:1 field 'group': must be a string or an integer"):
        load_records(path)


@pytest.mark.parametrize("value", ["maybe", 1, None, [True]])
def test_a_deletion_risk_must_be_true_or_false(value, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a", "deletion_risk": value}) + "\n")
    with pytest.raises(InputError, match="r.jsonl:1 field 'deletion_risk': must be true or false"):
        load_records(path)


def test_a_deletion_risk_reads_as_a_boolean_from_json_and_csv(tmp_path: Path) -> None:
    js = tmp_path / "r.jsonl"
    js.write_text(json.dumps({"question": "q", "answer": "a", "deletion_risk": True}) + "\n")
    cs = tmp_path / "r.csv"
    cs.write_text("question,answer,deletion_risk\nq,a,TRUE\nq2,a2,false\n")
    assert [r.meta["deletion_risk"] for r in [*load_records(js), *load_records(cs)]] == [True, True, False]


@pytest.mark.parametrize("body", ["[1]", '{"base_model_name_or_path": {"a": 1}}', "{", '"x"'])
def test_a_malformed_adapter_config_is_one_model_error(body: str, tmp_path: Path) -> None:
    from unlearn.errors import ModelError
    from unlearn.lora import base_of

    (tmp_path / "adapter_config.json").write_text(body)
    with pytest.raises(ModelError, match="adapter_config.json"):
        base_of(tmp_path)


def test_the_reader_fuzz_fast_cases_are_all_clean_errors() -> None:
    """The seeded fuzz benchmark's first 200 in-process and 20 CLI cases (tests/benchmarks/reader_fuzz.py runs
    1,500 + 100): every malformed input is one clean error, never accepted, a traceback or a hang."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reader_fuzz", Path(__file__).parent / "benchmarks" /
                                                  "reader_fuzz.py")
    assert spec is not None and spec.loader is not None
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    per, cli = fuzz.run_cases(200, 20, seed=1)
    outcomes = {k for counts in per.values() for k in counts} | set(cli)
    assert outcomes <= {"error", "reported"}, (dict(per), cli)
    assert sum(sum(c.values()) for c in per.values()) == 200 and len(per) == 7  # every kind of reader
