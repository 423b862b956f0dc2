"""The Python API: kdrun.run is `kdrun train` from a notebook; load_run and the report table read results back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, read_metrics, read_summary, run_kdrun
from kdrun.errors import ConfigError

FAST = [*TINY, "trainer.threads=1"]


@pytest.fixture
def threads_restored():
    """kdrun.run sets torch's threads for the process (trainer.threads): give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_import_kdrun_stays_cheap():
    """No torch, Hydra or OmegaConf at `import kdrun`, nor when reading results back."""
    code = ("import sys, kdrun; kdrun.load_run; kdrun.report_table; kdrun.RunSummary; "
            "print(sorted(name for name in ('torch', 'hydra', 'omegaconf', 'numpy') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_run_is_the_cli_run_from_python(tmp_path, threads_restored):
    """Same composition, same pipeline: the same overrides give the same numbers and the same files."""
    import kdrun

    overrides = [*FAST, "method=basic", "T=3", f"cache_dir={tmp_path / 'cache'}"]
    summary = kdrun.run(overrides, run_dir=tmp_path / "api")
    result = run_kdrun("train", *overrides, f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert isinstance(summary, kdrun.RunSummary) and summary.status == "completed" and summary.run_dir == str(tmp_path / "api")
    assert summary.phases["distilled"].method == "basic" and summary.phases["distilled"].T == 3.0
    cli = read_summary(tmp_path / "cli")
    # the CLI run found the API run's teacher and independent student in the cache: the same keys, the same config
    assert [cli["phases"][phase]["source"] for phase in ("teacher", "independent")] == ["cache", "cache"]
    for phase in ("teacher", "independent", "distilled"):
        assert summary.phases[phase].test_acc == cli["phases"][phase]["test_acc"]
    assert summary.gap_recovered == cli["gap_recovered"] and summary.overrides == cli["overrides"]
    timeless = lambda run: [{key: value for key, value in line.items() if key not in ("seconds", "samples_per_s")}  # noqa: E731
                            for line in read_metrics(run) if line["phase"] == "distilled"]
    assert timeless(tmp_path / "api") == timeless(tmp_path / "cli") and len(timeless(tmp_path / "cli")) == 2
    files = lambda root: sorted(str(path.relative_to(root)) for path in root.rglob("*") if "tensorboard" not in path.parts)  # noqa: E731
    assert files(tmp_path / "api") == files(tmp_path / "cli")
    assert (tmp_path / "api" / ".hydra" / "config.yaml").read_text() == (tmp_path / "cli" / ".hydra" / "config.yaml").read_text().replace(
        str(tmp_path / "cli"), str(tmp_path / "api"))
    again = kdrun.load_run(tmp_path / "api")
    assert again == summary and list(again.phases) == ["teacher", "independent", "distilled"]


def test_report_table_is_the_reports_table_as_numbers(tmp_path):
    import kdrun

    for seed, accuracies in ((0, (0.9, 0.6, 0.7)), (1, (0.9, 0.5, 0.8))):
        run_dir = tmp_path / "sweep" / str(seed)
        run_dir.mkdir(parents=True)
        phases = {phase: {"source": "trained", "test_acc": value, "test_acc_last": value, "best_epoch": 1,
                          "best_val_acc": value + 0.01, "params": 10, "seconds": 1.0}
                  for phase, value in zip(("teacher", "independent", "distilled"), accuracies)}
        phases["distilled"].update(method="basic", T=4.0, alpha=0.5)
        gap = (accuracies[2] - accuracies[1]) / (accuracies[0] - accuracies[1])
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "seed": seed, "overrides": [f"seed={seed}"],
                                                          "phases": phases, "gap_recovered": gap}))
    (row,) = kdrun.report_table(tmp_path / "sweep")
    assert row["method"] == "basic" and row["T"] == 4.0 and row["alpha"] == 0.5 and row["seeds"] == 2
    assert row["distilled_test"] == pytest.approx(0.75) and row["distilled_test_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert row["independent_test"] == pytest.approx(0.55) and row["distilled_val"] == pytest.approx(0.76)
    assert row["gap_recovered"] == pytest.approx((1 / 3 + 3 / 4) / 2)
    frame = kdrun.report_frame(tmp_path / "sweep")
    assert list(frame.columns) == list(row) and frame.loc[0, "distilled_test"] == pytest.approx(0.75)


def test_bad_input_raises_config_errors_and_writes_nothing(tmp_path, monkeypatch):
    import kdrun

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        kdrun.run(["method=nope"])
    assert caught.value.one_line().startswith("unknown method 'nope' (choose one of: ")
    with pytest.raises(ConfigError) as caught:
        kdrun.run(["alpha=0.1,0.9"])
    assert caught.value.one_line() == ("Ambiguous value for argument 'alpha=0.1,0.9' (kdrun.run takes one config: "
                                       "loop over the values in Python, or sweep with kdrun train -m)")
    with pytest.raises(ConfigError, match="T=0.0 must be > 0"):
        kdrun.run([*FAST, "T=0"], run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "outputs").exists()
    with pytest.raises(ConfigError, match="no summary.json in"):
        kdrun.load_run(tmp_path / "nowhere")


def test_a_finished_run_dir_is_never_overwritten(tmp_path, threads_restored):
    import kdrun

    summary = kdrun.run([*FAST, "independent=false", f"cache_dir={tmp_path / 'cache'}"], run_dir=tmp_path / "run")
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    with pytest.raises(ConfigError, match="already holds a run"):
        kdrun.run([*FAST, "T=9", f"cache_dir={tmp_path / 'cache'}"], run_dir=tmp_path / "run")
    assert {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()} == before
    assert summary.phases.keys() == {"teacher", "distilled"}
