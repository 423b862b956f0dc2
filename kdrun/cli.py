"""`kdrun <command> ...`: dispatch to subcommands, and turn every failure into one line.

This is the one place that catches kdrun's errors: commands raise KdrunError (kdrun/errors.py) and
`main` prints `kdrun: error: <what> (<how to fix>)` and exits with its code (2 bad input, 1 a failed
run, 130 interrupted). Nothing heavy is imported at module level: `kdrun --help` must answer
instantly, and torch is imported only by the commands that train. Adding a command = one entry in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, NoReturn, Sequence

from kdrun import __version__
from kdrun.errors import KdrunError, tracebacks_requested

# name -> (module:function taking the remaining argv, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kdrun.commands.train:main", "one run: teacher -> independent student -> distilled student (Hydra overrides)"),
    "bench": ("kdrun.commands.bench:main", "speed benchmark: kdrun's path side by side with a plain PyTorch loop"),
    "report": ("kdrun.commands.report:main", "tables, report.md/report.csv and plots for a run dir or a sweep dir"),
    "diffusion": ("kdrun.commands.diffusion:main", "progressive distillation of a diffusion sampler: teacher DDIM vs distilled, FID per step count"),
    "resume": ("kdrun.commands.resume:main", "continue an interrupted or killed run from its last checkpoint: kdrun resume RUN_DIR"),
    "export": ("kdrun.commands.export:main", "ONNX / torch.export files of a run's distilled (and compressed) students, checked: kdrun export DIR"),
}


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in COMMANDS:
        try:
            _load(COMMANDS[arguments[0]][0])(arguments[1:])
        except KdrunError as error:
            if tracebacks_requested():
                raise
            fail(error.one_line(), error.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside a run (a run records it in summary.json itself)
            fail("interrupted (Ctrl-C)", 130)
        except BrokenPipeError:  # `kdrun train --help | head`: the reader left early
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error while Python flushes stdout
            raise SystemExit(1) from None
        return
    _top_level_parser().parse_args(arguments or ["--help"])


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdrun",
        description="Knowledge distillation experiments: how much does distillation help this student?",
        epilog="Run `kdrun train --help` for the config groups and keys. `python -m kdrun` works the same.",
    )
    parser.add_argument("--version", action="version", version=f"kdrun {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_, description) in COMMANDS.items():
        subcommands.add_parser(name, help=description, add_help=False)
    return parser


def _load(target: str) -> Callable[[list[str]], None]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print `kdrun: error: ...` as one line on stderr and exit."""
    sys.stderr.write("kdrun: error: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)
