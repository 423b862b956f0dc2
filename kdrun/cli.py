"""`kdrun <command> ...`: dispatch to subcommands, and turn every failure into one line.

Nothing heavy is imported at module level: `kdrun --help` must answer instantly, and torch is
imported only by the commands that train. Adding a command = one entry in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Callable, NoReturn, Sequence

from kdrun import __version__

# name -> (module:function taking the remaining argv, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kdrun.commands.train:main", "one run: teacher -> independent student -> distilled student (Hydra overrides)"),
    "bench": ("kdrun.commands.bench:main", "speed benchmark: kdrun's path side by side with a plain PyTorch loop"),
    "report": ("kdrun.commands.report:main", "tables, report.md/report.csv and plots for a run dir or a sweep dir"),
    "diffusion": ("kdrun.commands.diffusion:main", "progressive distillation of a diffusion sampler: teacher DDIM vs distilled student, FID per step count"),
    "resume": ("kdrun.commands.resume:main", "continue an interrupted or killed run from its last checkpoint: kdrun resume RUN_DIR"),
}

# Hydra flags that take a value, and --info's optional values; used to move flags before overrides.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in COMMANDS:
        try:
            _load(COMMANDS[arguments[0]][0])(arguments[1:])
        except KeyboardInterrupt:  # Ctrl-C outside a run (a run records it in summary.json itself)
            fail("interrupted (Ctrl-C)", 130)
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


def flags_first(arguments: Sequence[str]) -> list[str]:
    """Move Hydra's flags (with their values) in front of the overrides.

    Hydra's argparse rejects `a=1 -m b=2`; users type flags anywhere.
    """
    flags: list[str] = []
    overrides: list[str] = []
    tokens = list(arguments)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("-"):
            overrides.append(token)
            continue
        flags.append(token)
        takes_value = token in FLAGS_WITH_VALUE or (token in ("--info", "-i") and tokens and tokens[0] in INFO_VALUES)
        if takes_value and tokens:
            flags.append(tokens.pop(0))
    return flags + overrides


def fail(message: str, exit_code: int) -> NoReturn:
    """Print `kdrun: error: ...` as one line on stderr and exit."""
    sys.stderr.write("kdrun: error: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)


def full_errors_requested() -> bool:
    """HYDRA_FULL_ERROR=1 (as the user set it) means: show tracebacks instead of one-line errors."""
    return os.environ.get("KDRUN_USER_HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def describe_config_error(error: BaseException, multirun: bool = False) -> str:
    """One line for Hydra's and OmegaConf's composition errors, with the valid choices where known.

    In a multirun Hydra first composes a base config from the NON-swept overrides and the default
    group options (hydra#2888), so `-m method=fitnets,cosine_hidden method.student_layer=5` fails on
    the default method; `++key=value` sets the key in every job, and each job still validates it.
    """
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        listing = text.split("Available options", 1)[-1].split("Config search path", 1)[0] if "Available options" in text else ""
        choices = re.findall(r"^\t(\S+)", listing, flags=re.MULTILINE)
        return f"unknown {group} '{option}' (choose one of: {', '.join(choices)})" if choices else f"unknown {group} '{option}'"
    override = re.search(r"Could not override '([^']+)'", text)
    if override:
        key = override.group(1)
        if multirun:
            return (f"unknown config key '{key}' in the sweep's base config, which Hydra composes with the default "
                    f"group options (to set a key of swept group options, write ++{key}=...; each job still checks it)")
        return f"unknown config key '{key}' (see `kdrun train --cfg job` for valid keys; to add a new key use +{key}=...)"
    cause = error.__cause__
    if cause is not None and str(cause):
        text = f"{text.splitlines()[0]}: {str(cause).splitlines()[0]}"
        full_key = re.search(r"full_key: (\S+)", str(cause))
        if full_key:
            text += f" (key {full_key.group(1)}: give a value of its type, see `kdrun train --cfg job`)"
    return " ".join(text.split())
