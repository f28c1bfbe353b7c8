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


def _console_script() -> str:
    script = Path(sys.executable).parent / "unlearn"
    assert script.is_file(), "the console script is not installed next to this python"
    return str(script)


@pytest.mark.slow  # starts processes
def test_console_script_runs(tmp_path: Path) -> None:
    proc = subprocess.run([_console_script(), "info", "/no/such/model"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", _subcommands(), ids=lambda a: " ".join(a))
def test_global_flags_work_before_and_after_every_subcommand(argv: list[str]) -> None:
    parser = build_parser()
    extra = {"info": ["m"], "ledger verify": ["l.jsonl"], "ledger recover": ["l.jsonl"], "ledger show": ["l.jsonl"],
             "ledger receipt": ["l.jsonl", "--out", "r.json"],
             "attribute": ["--model", "m", "--train", "a", "--test", "t"], "requests add": ["r.jsonl"],
             "manifest": ["d.jsonl", "--out", "m.jsonl"]}
    rest = extra.get(" ".join(argv), [])
    if argv in (["benchmark"], ["ledger"], ["requests"]):
        return  # groups: their actions carry the flags
    flags = ["--json", "--quiet", "--debug", "--cache", "C", "--preset", "tiny", "--template", "chat", "--dtype",
             "bfloat16", "--device", "cpu", "--trust-remote-code"]
    for args in (parser.parse_args([*flags, *argv, *rest]), parser.parse_args([*argv, *rest, *flags])):
        assert (args.json, args.quiet, args.debug, args.cache, args.preset) == (True, True, True, "C", "tiny")
        assert (args.template, args.dtype, args.device, args.trust_remote_code) == ("chat", "bfloat16", "cpu", True)
    args = parser.parse_args([*argv, *rest])
    assert (args.json, args.quiet, args.debug, args.cache, args.preset) == (False, False, False, None, "default")
    assert (args.template, args.dtype, args.device, args.trust_remote_code) == (None, None, None, False)


def test_any_exception_is_one_error_line_and_debug_shows_the_traceback(tiny_model_dir: Path, capsys,
                                                                      monkeypatch) -> None:
    import unlearn.cli.info as info

    def boom(args, ui):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: RuntimeError: something broke (internal error; rerun with --debug for the traceback)"
    assert main(["info", str(tiny_model_dir), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("(internal error; rerun with --debug for the traceback)")


BAD_ARGS = [
    (["audit", "--batch-size", "0"], "key 'batch_size' must be >= 1, got 0"),
    (["audit", "--k", "2"], "key 'k' must be <= 1"),
    (["audit", "--scores", "loss,bogus"], "unknown score(s) bogus"),
    (["audit", "--attacks", "bogus"], "unknown attack(s) bogus"),
    (["forget", "--method", "soul", "--dry-run", "--config", "{cfg}"], "betas' must have 2 values"),
    (["forget", "--method", "nope", "--dry-run"], "unknown method 'nope'"),
    (["forget", "--dry-run", "--config", "no_such_preset"], "not a file, nor a shipped methods preset"),
    (["forget", "--max-steps", "0", "--dry-run"], "key 'max_steps' must be >= 1"),
    (["compare", "--config", "no_such_preset"], "shipped compare preset: all, soul_vs_adamw"),
    (["attribute", "--model", "m", "--train", "a.jsonl", "--test", "t.jsonl", "--method", "bogus"],
     "unknown attribution method 'bogus'"),
    (["attribute", "--model", "m", "--train", "a.jsonl", "--test", "t.jsonl", "--steps", "0"], "key 'steps'"),
    (["worst-case", "--k", "0"], "k must be >= 1"),
    (["forget", "--dry-run", "--accelerate-config", "nope"], "shipped accelerate preset"),
    (["audit", "--device", "bogus"], "device must be cpu, cuda"),
    (["audit", "--relearn-steps", "0", "--relearn-lr", "-1"], "'relearn_steps' must be >= 1, got 0; key 'relearn_lr'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS, ids=[" ".join(a[:3]) for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_error_line_before_any_work(argv, message, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "soul.yaml"
    cfg.write_text("betas: [0.9]\n")
    argv = [a.replace("{cfg}", str(cfg)) for a in argv]
    code = main([*argv, "--preset", "tiny", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")]
                if argv[0] not in ("forget",) or "--dry-run" not in argv else [*argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()  # refused before any work


def test_progress_is_plain_lines_when_not_a_terminal(capsys) -> None:
    from unlearn.cli.common import UI

    ui = UI()
    with ui.running():
        for i in range(101):
            ui.progress("training target", i, 100, "loss=0.5")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "training target: 0/100 loss=0.5" and lines[-1] == "training target: 100/100 loss=0.5"
    assert 10 <= len(lines) <= 12  # every 10%, not every step
