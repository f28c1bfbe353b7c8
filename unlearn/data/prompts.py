"""Prompt formats of QA records (plain, chat, custom templates) and how a record renders under one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn.data.records import QA_TEMPLATE, Record
from unlearn.errors import InputError
from unlearn.jsonio import JsonObject, show


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

    def describe(self) -> JsonObject:
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
