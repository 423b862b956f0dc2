"""kdrun's default sweeper composes each job of a sweep once: validation's configs go to the launcher."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hydra.types import HydraContext
from omegaconf import OmegaConf

from conftest import TINY, run_kdrun
from kdrun.commands.sweep_compose import ComposeOnce


class CountingLoader:
    """Stands in for Hydra's loader: a new config per call, numbered, and a failure for bad overrides."""

    def __init__(self) -> None:
        self.calls = 0

    def load_sweep_config(self, master_config, sweep_overrides):
        if "T=abc" in sweep_overrides:
            raise ValueError("Error merging override T=abc")
        self.calls += 1
        return OmegaConf.create({"overrides": list(sweep_overrides), "call": self.calls})


def sweeper_over(loader: CountingLoader, master):
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's first plugin scan runs its core plugins' modules again: subclass the final BasicSweeper
    from hydra_plugins.kdrun_sweeper.basic_sweeper import KdrunBasicSweeper

    sweeper = KdrunBasicSweeper(max_batch_size=None, params=None)
    sweeper.hydra_context, sweeper.config = HydraContext(config_loader=ComposeOnce(loader), callbacks=None), master
    return sweeper


def test_the_launcher_gets_each_validated_config_once_and_equal_jobs_get_their_own():
    loader, master = CountingLoader(), OmegaConf.create({})
    sweeper = sweeper_over(loader, master)
    batch = [["T=2"], ["T=4"], ["T=2"]]  # the same overrides twice: two jobs, two configs
    sweeper.validate_batch_is_legal(batch)
    assert loader.calls == 3
    configs = [sweeper.hydra_context.config_loader.load_sweep_config(master, overrides) for overrides in batch]
    assert loader.calls == 3  # nothing composed twice
    assert [config.call for config in configs] == [1, 2, 3] and len({id(config) for config in configs}) == 3
    again = sweeper.hydra_context.config_loader.load_sweep_config(master, ["T=2"])  # not kept any more: composed
    assert loader.calls == 4 and again.call == 4


def test_validation_still_fails_early_and_other_masters_or_processes_compose_anew(tmp_path: Path):
    loader, master = CountingLoader(), OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    sweeper = sweeper_over(loader, master)
    with pytest.raises(ValueError, match="T=abc"):
        sweeper.validate_batch_is_legal([["T=2"], ["T=abc"]])
    compose_once = sweeper.hydra_context.config_loader
    compose_once.load_sweep_config(OmegaConf.create({}), ["T=2"])  # another master config: not the kept one
    assert loader.calls == 2
    copied = pickle.loads(pickle.dumps(compose_once))  # joblib/submitit workers compose for themselves
    assert copied.kept == {} and compose_once.kept[(id(master), ("T=2",))]


def test_a_sweep_uses_kdruns_sweeper_and_a_bad_value_stops_it_before_any_job(tmp_path: Path):
    bad = run_kdrun("train", "-m", "T=2,abc", *TINY, f"hydra.sweep.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert bad.returncode == 2 and "could not be converted to Float" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()  # not even Hydra's multirun.yaml
    shown = run_kdrun("train", "--cfg", "hydra", cwd=tmp_path)
    assert "hydra_plugins.kdrun_sweeper.basic_sweeper.KdrunBasicSweeper" in shown.stdout, shown.stderr
    both = run_kdrun("train", "-m", "T=2,4", "--cfg", "hydra", cwd=tmp_path)  # Hydra's check was a traceback
    assert both.returncode == 2 and both.stderr.strip().splitlines() == [
        "kdrun: error: --cfg and --multirun cannot be combined (drop -m to print one job's config (--cfg job))"], both.stderr
