"""Prompt formats: the tokenizer's chat template, custom format strings, and the plain default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearn.data import encode_many, parse_format, qa_record, render, set_format, special_prefix, text_record
from unlearn.errors import InputError
from unlearn.logprobs import token_logprobs
from unlearn.model import load_model

REC = qa_record("q1", "Where was Kalo Venra born?", "In the town of Tolmere.")


def test_chat_template_masks_exactly_the_assistant_turn(chat_model_dir: Path) -> None:
    _, tok = load_model(chat_model_dir, template="chat")
    ids, labels = encode_many([REC], tok)[0]
    prompt = f"<|im_start|>user\n{REC.question}<|im_end|>\n<|im_start|>assistant\n"
    answer = f"{REC.answer}<|im_end|>\n"
    by_hand_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    by_hand_answer = tok(answer, add_special_tokens=False)["input_ids"]
    assert ids == by_hand_prompt + by_hand_answer  # no BOS forced, no EOS appended: the template has its own
    assert labels == [-100] * len(by_hand_prompt) + by_hand_answer
    assert special_prefix(tok) == []  # the tokenizer adds nothing itself (its bos_token is a role token)
    text = text_record("t", "Plain text is scored as it is.")  # only QA records take the template
    assert encode_many([text], tok)[0][0] == tok(text.response, add_special_tokens=False)["input_ids"]
    system = parse_format(_yaml(chat_model_dir.parent / "sys.yaml", "kind: chat\nsystem: Be brief.\n"))
    assert render(REC, tok, system)[0].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_scores_follow_the_template_and_match_a_manual_computation(chat_model_dir: Path) -> None:
    model, tok = load_model(chat_model_dir, template="chat")
    chat = token_logprobs(model, tok, [REC])
    ids, labels = encode_many([REC], tok)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    manual = sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1) if labels[t + 1] != -100)
    assert float(chat.sum_lp()[0]) == pytest.approx(manual, abs=1e-4)
    assert not bool(chat.eos_last[0])  # no appended EOS to leave out of Min-K
    set_format(tok, parse_format("plain"))
    plain = token_logprobs(model, tok, [REC])
    assert float(plain.sum_lp()[0]) != pytest.approx(manual, abs=1e-3)
    set_format(tok, parse_format("<|user|> {question} <|bot|>"))
    custom_ids, custom_labels = encode_many([REC], tok)[0]
    assert custom_ids[-1] == tok.eos_token_id and tok.decode(custom_ids[: custom_labels.index(
        next(x for x in custom_labels if x != -100))]).startswith("<|user|> Where")


def test_bad_templates_are_one_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no chat template"):
        load_model(tiny_model_dir, template="chat")
    with pytest.raises(InputError, match="template must be plain, chat"):
        parse_format("nonsense")
    with pytest.raises(InputError, match="unknown key"):
        parse_format(_yaml(tmp_path / "t.yaml", "kind: chat\nsytem: typo\n"))


def test_plain_on_a_chat_tokenizer_warns(chat_model_dir: Path) -> None:
    with pytest.warns(UserWarning, match="has a chat template"):
        load_model(chat_model_dir)


@pytest.mark.slow
def test_forget_and_audit_a_chat_model_end_to_end(chat_model_dir: Path, bench, tmp_path: Path, capsys) -> None:
    from unlearn.cli.main import main

    person = bench.split("forget10")[0].meta["person"]
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"id": r.id}) + "\n" for r in bench.split("forget10")
                           if r.meta["person"] == person))
    common = ["--manifest", str(bench.manifest), "--data", str(bench.split_path("train")), "--holdout",
              str(bench.split_path("holdout"))]
    assert main(["forget", "--model", str(chat_model_dir), "--template", "chat", "--requests", str(req), *common,
                 "--max-steps", "3", "--copy-unchanged", "--out", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["template"] == {"kind": "chat"} and receipt["special_prefix"] == []
    assert receipt["verdict"] in ("REMOVED", "NOT REMOVED", "OVER-UNLEARNED", "INCONCLUSIVE")
    assert main(["audit", "--model", str(tmp_path / "out"), "--template", "chat", "--members", str(req.with_name(
        "m.jsonl")), "--nonmembers", str(bench.split_path("holdout")), "--out", str(tmp_path / "a"), "--quiet",
                 "--json"]) == 2  # members not written yet: one clear error, nothing written
    assert not (tmp_path / "a").exists()
    from unlearn.data import record_to_json, write_jsonl

    write_jsonl(tmp_path / "m.jsonl", [record_to_json(r) for r in bench.split("forget10")
                                       if r.meta["person"] == person])
    capsys.readouterr()
    members = str(tmp_path / "m.jsonl")
    assert main(["audit", "--model", str(tmp_path / "out"), "--template", "chat", "--members", members,
                 "--nonmembers", str(bench.split_path("holdout")), "--out", str(tmp_path / "a"), "--quiet",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["template"] == {"kind": "chat"}


@pytest.mark.parametrize("spec", ["Q: {question} A: {answer}", "{question.__class__}", "{question!r}",
                                  "{question:>10}", "{0}{question}", "{question", "{question[0]}", "{}"])
def test_a_template_holds_exactly_its_placeholder(spec: str) -> None:
    with pytest.raises(InputError, match="template") as err:
        parse_format(spec)
    assert "\n" not in str(err.value)


def test_template_files_are_checked_the_same_way(tmp_path) -> None:
    for body, match in [("kind: custom\nresponse: ' {answer}'\n", "needs a prompt"),
                        ("prompt: 'Q: {question}'\nresponse: '{answer.upper}'\n", "response"),
                        ("prompt: [1]\n", "must be strings"), ("kind: fancy\nprompt: '{question}'\n", "kind")]:
        f = tmp_path / "t.yaml"
        f.write_text(body)
        with pytest.raises(InputError, match=match):
            parse_format(f)
    assert parse_format("{{literal}} Q: {question}").prompt == "{{literal}} Q: {question}"
