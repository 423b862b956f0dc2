"""Instant startup: `kdrun train --help` and `--cfg job` import no torch, and kdrun's help lists what Hydra's would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import kdrun_env

# Runs the CLI in a fresh interpreter, then reports which heavy modules the command pulled in.
PROBE = """
import sys
from kdrun.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    if stop.code:
        raise
print("HEAVY:", sorted(name for name in ("torch", "torchvision", "sklearn", "matplotlib") if name in sys.modules))
"""


@pytest.mark.parametrize("arguments", [["--help"], ["train", "--help"], ["train", "--cfg", "job"],
                                       ["train", "method=dkd", "experiment=mnist_mlp", "--cfg", "job"],
                                       ["diffusion", "--help"], ["diffusion", "dataset=mnist", "--cfg", "job"]])
def test_help_and_printing_the_config_import_no_torch(tmp_path, arguments):
    result = subprocess.run([sys.executable, "-c", PROBE, *arguments], cwd=tmp_path, env=kdrun_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY: []"


def test_the_help_lists_the_groups_and_options_hydra_itself_finds():
    """kdrun lists conf/ itself (Hydra's help composes once per group, seconds); Hydra's config loader is the oracle."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.commands.hydra_app import config_groups, register
    from kdrun.config import config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):  # Hydra's --help: nested groups too
        expected = GlobalHydra.instance().hydra.format_config_groups(lambda group: group.split("/")[0] != "hydra")
    assert config_groups() == expected and "method: " in expected and "diffusion/preset: " in expected


def test_help_shows_the_composed_config_with_overrides(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kdrun", "train", "method=basic", "T=7", "--help"], cwd=tmp_path,
                            env=kdrun_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("kdrun train: teacher -> independent student -> distilled student")
    assert "== Configuration groups ==" in out and "\nmethod:\n  name: basic\n" in out and "\nT: 7.0\n" in out
    assert "hydra:" not in out and "Examples:" in out
