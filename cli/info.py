"""`unlearn info`: parameters, layers, tokenizer and dtype of a model."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from unlearn.cli.common import UI, sub_parser


def add_parser(sub: Any) -> None:
    i = sub_parser(sub, "info", "parameters, layers, tokenizer and dtype of a model")
    i.add_argument("model", help="local model directory")
    i.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    from unlearn.model import model_info

    info = model_info(args.model)
    ui.table(f"model {args.model}", ["field", "value"], [[k, v] for k, v in asdict(info).items()])
    ui.json(asdict(info))
    return 0
