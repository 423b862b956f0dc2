"""`kdrun resume DIR`: continue an interrupted or killed run in its own directory.

Reruns the command that made the run (`kdrun train` or `kdrun diffusion`: Hydra's job name in
DIR/.hydra/hydra.yaml) with the overrides the run was started with (DIR/.hydra/overrides.yaml),
`hydra.run.dir=DIR` and `resume=true`; extra overrides (e.g. trainer.progress=false) may follow DIR.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from kdrun.errors import ConfigError

NOT_REPEATED = ("resume", "hydra.run.dir")  # set here; an earlier resume recorded them among the overrides


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="kdrun resume", description="Continue an interrupted run from its last checkpoint, in its own directory."
    )
    parser.add_argument("run_dir", type=Path, help="the run dir (holds .hydra/overrides.yaml)")
    parser.add_argument("overrides", nargs="*", help="extra overrides that do not change the run (e.g. trainer.progress=false)")
    options = parser.parse_args(arguments)
    run_dir = options.run_dir.expanduser().resolve()
    overrides = original_overrides(run_dir)
    command = importlib.import_module(f"kdrun.commands.{run_command(run_dir)}")
    command.main([*overrides, *options.overrides, "hydra.run.dir=" + quoted(str(run_dir)), "resume=true"])


def run_command(run_dir: Path) -> str:
    """`train` or `diffusion`: the command that made the run (Hydra's job name in .hydra/hydra.yaml)."""
    import yaml

    try:
        name = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return "train"
    return "diffusion" if name == "diffusion" else "train"


def original_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was started with, as Hydra recorded them."""
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a kdrun run dir (no .hydra/overrides.yaml)", "pass the dir of an interrupted run")
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is unreadable ({' '.join(str(error).split())[:120]})", "restore it or rerun kdrun train") from None
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"{path} is not a list of overrides", "restore it or rerun kdrun train")
    return [item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in NOT_REPEATED]


def quoted(value: str) -> str:
    """A Hydra override value in single quotes: run dir names contain ',' and '=' (e.g. `_T=10,method=basic`)."""
    return "'" + value.replace("'", "\\'") + "'"
