"""Everything Hydra-specific about `kdrun train`, `kdrun diffusion` and `kdrun.run`: the app, the compose API, argv order,
`--help`, open model groups, and Hydra's errors as ConfigErrors.

Nothing here imports torch, so `kdrun train --help` and `kdrun train --cfg job` answer in well under
a second. Hydra's own `--help` lists the option of every config group by composing the config once
per group (about 90 times with Hydra's groups, 3-8 s here); kdrun renders the same help template
from one composition and a listing of conf/ (tests/test_cli.py compares the group lines with Hydra's).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from kdrun.config import config_dir, register_schema
from kdrun.errors import ConfigError, KdrunError, RunError

# Hydra flags that take a value, and --info's optional values; used to move flags before overrides.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
HELP_FLAGS = {"--help", "-h"}
OPEN_MODEL_OPTIONS = {"custom", "timm"}  # model options whose builder passes every other key to the model (kdrun/models/)
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}  # bad input (exit 2), unlike a full disk


@dataclass(frozen=True)
class HydraCommand:
    """A kdrun command that is a Hydra app: its name, its primary config in conf/, and its typed schema."""

    name: str
    config_name: str
    register_schema: Callable[[], None]


TRAIN = HydraCommand("train", "config", register_schema)


class _ThroughHydra(BaseException):
    """Carries a KdrunError from the task past Hydra, which logs and re-raises every Exception of a task."""

    def __init__(self, error: KdrunError) -> None:
        super().__init__(error.one_line())
        self.error = error


def application(task: Callable[[Any], float], command: HydraCommand = TRAIN) -> Callable[[], Any]:
    """The Hydra app around `task`: kdrun's schema and run-dir resolver registered, Hydra's errors left to us."""
    import hydra

    if "KDRUN_USER_HYDRA_FULL_ERROR" not in os.environ:  # what the user asked for (kdrun.errors.tracebacks_requested)
        os.environ["KDRUN_USER_HYDRA_FULL_ERROR"] = os.environ.get("HYDRA_FULL_ERROR", "")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach hydra_errors instead of printing them itself
    register(command)

    @functools.wraps(task)
    def job(cfg: Any) -> float:
        try:
            return task(cfg)
        except KdrunError as error:
            raise _ThroughHydra(error) from None  # unwrapped again by hydra_errors

    return hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command.config_name)(job)


def register(command: HydraCommand = TRAIN) -> None:
    """The command's schema and the `kdrun_suffix` resolver (idempotent)."""
    from omegaconf import OmegaConf

    command.register_schema()
    if not OmegaConf.has_resolver("kdrun_suffix"):
        OmegaConf.register_new_resolver("kdrun_suffix", run_dir_suffix)


def run_dir_suffix(override_dirname: str) -> str:
    """`_T=10,method=basic` for the run dir name; '' without overrides. Slashes would nest folders."""
    if not override_dirname:
        return ""
    plain = re.sub(r"(^|,)\+{1,2}", r"\1", override_dirname)  # `++teacher.width=8` (open model groups) reads as typed
    return "_" + plain.replace(os.sep, "_")[:120]


def open_group_overrides(overrides: Sequence[str]) -> list[str]:
    """`teacher.depth=3` with `teacher=custom` (or timm) becomes `++teacher.depth=3`.

    Hydra closes every config node after composition, so a key that the option's YAML lacks needs `+`;
    for a custom model the keys ARE its constructor's arguments, unknown to kdrun, so they may be typed
    plainly. Keys the YAML defines (`_target_`, `weights`), flags and prefixed overrides stay as typed.
    """
    chosen = {group: value for group, _, value in (item.partition("=") for item in overrides)
              if group in ("teacher", "student") and value in OPEN_MODEL_OPTIONS}
    rewritten = []
    for item in overrides:
        group, _, name = item.partition("=")[0].partition(".")
        if group in chosen and name and item[:1] not in "+~-" and name.split(".")[0] not in _option_keys(group, chosen[group]):
            item = "++" + item
        rewritten.append(item)
    return rewritten


def _option_keys(group: str, option: str) -> set[str]:
    import yaml

    return set(yaml.safe_load((config_dir() / group / f"{option}.yaml").read_text()) or {})


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
    modes = sorted({MODE_FLAGS[flag] for flag in flags if flag in MODE_FLAGS})
    if len(modes) > 1:  # Hydra's own check raises a bare ValueError: a traceback
        raise ConfigError(f"{' and '.join(modes)} cannot be combined", "drop -m to print one job's config (--cfg job)")
    return flags + overrides


# Hydra's mutually exclusive modes, by every spelling
MODE_FLAGS = {"-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info",
              "--info": "--info", "-r": "--run", "--run": "--run", "--shell-completion": "--shell-completion", "-sc": "--shell-completion"}


def wants_help(arguments: Sequence[str]) -> bool:
    return any(token in HELP_FLAGS for token in arguments)


def render_help(arguments: Sequence[str], command: HydraCommand = TRAIN) -> str:
    """Hydra's help template for `kdrun <command> [overrides] --help`: groups and options, then the composed config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    register(command)
    overrides = [token for token in flags_first(arguments) if not token.startswith("-")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=command.name):
        cfg = compose(command.config_name, overrides=overrides, return_hydra_config=True)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    return string.Template(template).safe_substitute(
        APP_CONFIG_GROUPS=config_groups(), CONFIG=OmegaConf.to_yaml(cfg), HYDRA_CONFIG_GROUPS="", FLAGS_HELP="")


def config_groups() -> str:
    """`group: option, option` per config group of conf/ (Hydra's own groups left out, as in Hydra's help)."""
    root = config_dir()
    lines = []
    for folder in sorted(path for path in root.rglob("*") if path.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(path.stem for path in folder.glob("*.yaml"))
        if options and group.split("/")[0] != "hydra":
            lines.append(f"{group}: {', '.join(options)}\n")
    return "".join(lines)


@contextlib.contextmanager
def hydra_errors(multirun: bool, command: HydraCommand = TRAIN) -> Iterator[None]:
    """THE translation of Hydra's and the file system's errors into kdrun's: bad input is a ConfigError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except _ThroughHydra as carrier:
        raise carrier.error from carrier.error.__cause__
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(describe_config_error(error, multirun, command.name)) from error
    except BrokenPipeError:  # `kdrun train --cfg job | head`: the reader left; not a kdrun failure
        raise
    except OSError as error:  # e.g. Hydra creating an unwritable hydra.run.dir, or a full disk
        kind = ConfigError if error.errno in UNWRITABLE else RunError
        raise kind(describe_os_error(error)) from error


def describe_os_error(error: OSError) -> str:
    """One line for a file system failure: which path, why, and what to change."""
    where = f" {error.filename}" if error.filename else ""
    hint = "free disk space" if error.errno == errno.ENOSPC else "pick a writable hydra.run.dir and cache_dir"
    return f"cannot write{where}: {error.strerror or error} ({hint})"


def describe_config_error(error: BaseException, multirun: bool = False, command: str = "train") -> str:
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
        return f"unknown config key '{key}' (see `kdrun {command} --cfg job` for valid keys; to add a new key use +{key}=...)"
    cause = error.__cause__
    if cause is not None and str(cause):
        text = f"{text.splitlines()[0]}: {str(cause).splitlines()[0]}"
        full_key = re.search(r"full_key: (\S+)", str(cause))
        if full_key:
            text += f" (key {full_key.group(1)}: give a value of its type, see `kdrun {command} --cfg job`)"
    return " ".join(text.split())


@dataclass
class ComposedRun:
    """A config composed for `kdrun.run`: the task's part (what the run reads), the whole (with hydra), where, and how."""

    task: Any
    full: Any
    run_dir: Path
    overrides: list[str]  # as Hydra records them in .hydra/overrides.yaml


def compose_run(overrides: Sequence[str], run_dir: Optional[Path]) -> ComposedRun:
    """What `kdrun train OVERRIDES` composes (same conf/, schema, open model groups, run dir pattern), via the compose API.

    Raises:
        ConfigError: a composition error, or a sweep (`alpha=0.1,0.9`: one config per call).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register()
    items = open_group_overrides(overrides)
    if run_dir is not None:
        items.append("hydra.run.dir='" + str(run_dir).replace("'", "\\'") + "'")  # names hold ',' and '='
    with hydra_errors(multirun=False), initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        try:
            full = compose("config", overrides=items, return_hydra_config=True)
        except Exception as error:
            if "Ambiguous value" in str(error):  # Hydra's advice (add --multirun) does not apply here
                raise ConfigError(str(error).splitlines()[0], "kdrun.run takes one config: loop over the values in Python, "
                                  "or sweep with kdrun train -m") from None
            raise
    HydraConfig.instance().set_config(full)  # resolves ${now:} and the override-named run dir
    task = copy.deepcopy(full)
    with open_dict(task):
        del task["hydra"]
    return ComposedRun(task, full, Path(str(full.hydra.run.dir)).expanduser().resolve(), list(full.hydra.overrides.task))


def save_hydra_files(composed: ComposedRun) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them for `kdrun train`
    (`kdrun resume` and `kdrun export` read them)."""
    from omegaconf import OmegaConf

    from kdrun.files import write_bytes_atomic

    folder = composed.run_dir / ".hydra"
    write_bytes_atomic(folder / "config.yaml", OmegaConf.to_yaml(composed.task).encode())
    write_bytes_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.masked_copy(composed.full, ["hydra"])).encode())
    write_bytes_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(composed.overrides)).encode())
