"""`unlearn`: deletion requests, audits and comparisons for language models."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from unlearn.cli import (
    attribute,
    audit,
    benchmark,
    compare,
    forget,
    info,
    ledger,
    manifest,
    methods,
    requests,
    train,
    worst_case,
)
from unlearn.cli.common import UI, add_global_flags
from unlearn.errors import Interrupted, UnlearnError

COMMANDS = (forget, requests, audit, compare, attribute, worst_case, ledger, benchmark, info, methods, train,
            manifest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__)
    add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def relaunch(argv: Sequence[str], config: str) -> int:
    """Run the same command under ``accelerate launch --config_file config`` (one process per device)."""
    import subprocess

    import torch

    from unlearn.config import resolve_config

    path = resolve_config(config, "accelerate")
    rest, skip = [], False
    for a in argv:
        if skip or a.startswith("--accelerate-config="):
            skip = False
            continue
        if a == "--accelerate-config":
            skip = True
            continue
        rest.append(a)
    env = {**os.environ, "UNLEARN_LAUNCHED": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "-m", "unlearn.cli.main",
           *rest]
    return subprocess.call(cmd, env=env)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, UnlearnError):
        return text
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else text
    if isinstance(exc, MemoryError):
        return "out of memory"
    return f"{type(exc).__name__}: {text} (internal error; rerun with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one subcommand, and turn every error into one ``error:`` line and a non-zero exit
    (2 for bad input and failures, 130 for an interrupt; ``--debug`` prints the traceback too)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the application's own process, not the library's
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    ui = UI(quiet=args.quiet or rank > 0, as_json=args.json and rank == 0)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    old_term = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM is handled like Ctrl-C: honestly
    try:
        if getattr(args, "accelerate_config", None) and not os.environ.get("UNLEARN_LAUNCHED"):
            return relaunch(argv, args.accelerate_config)
        with redirect, ui.running():  # with --json, stdout carries the JSON document alone
            return int(args.run(args, ui))
    except KeyboardInterrupt:
        ui.err.print("interrupted: nothing was written")
        return 130
    except Interrupted as exc:
        ui.err.print(str(exc), markup=False, highlight=False)
        return 130
    except Exception as exc:  # the one place that turns any failure into one line
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        ui.error(_one_line(exc))
        return 2
    finally:
        _leave_process_group()
        signal.signal(signal.SIGTERM, old_term)
        if console:  # the command is over: a late Ctrl-C must not become a shutdown traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _leave_process_group() -> None:
    """Under a launcher, close this process's gloo/NCCL group before the interpreter exits (left open, its
    threads abort the process at exit). Never imports torch itself."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        import datetime

        with contextlib.suppress(Exception):  # every process leaves together (a dead one: after a minute)
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        dist.destroy_process_group()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
