from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearn.cli.main import build_parser, main


def _subcommands() -> list[list[str]]:
    parser = build_parser()
    out = []
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            out.append([name])
            for sub_action in getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []:
                out += [[name, child] for child in sub_action.choices]
    return out


@pytest.mark.parametrize("argv", _subcommands(), ids=lambda a: " ".join(a))
def test_every_subcommand_has_help(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: unlearn" in capsys.readouterr().out


def test_info_json(tiny_model_dir: Path, capsys) -> None:
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 2 and info["parameters"] > 0


def test_missing_model_is_one_error_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model directory not found") and "\n" not in err and "Traceback" not in err


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "unlearn.cli.main", "info", "/no/such/model"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
