"""The bad-input rows of docs/errors.md not already tested in test_cli.py / test_datasets.py / test_resume.py.

Each row runs the CLI as a user would and expects: exit code != 0, exactly one `kdrun: error:` line
naming the problem and the fix, no traceback, and no summary.json that could pass for a finished run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY, run_kdrun
from kdrun.models import build_model


class Payload:
    """A pickle that runs a command when loaded: the classic hostile checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def teacher_weights(tmp_path: Path, classes: int, hidden: list[int]) -> Path:
    """Weights of an MLP teacher for the digits data (1x8x8 inputs) with the given classes and hidden sizes."""
    path = tmp_path / f"teacher_{classes}_{'_'.join(map(str, hidden))}.safetensors"
    save_file(build_model("mlp", (1, 8, 8), classes, hidden=hidden, dropout=0.5).state_dict(), str(path))
    return path


def empty_image_root(tmp_path: Path) -> Path:
    for split in ("train", "test"):
        (tmp_path / "images" / split).mkdir(parents=True)
    return tmp_path / "images"


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


ROWS = {
    "empty dataset": (lambda tmp: ["dataset=imagefolder", f"dataset.root={empty_image_root(tmp)}"], 2,
                      "has no class sub-folders"),
    "checkpoint with another class count": (
        lambda tmp: [f"teacher.checkpoint={teacher_weights(tmp, 5, [1200, 1200])}"], 2,
        "its class count is 5, the dataset has 10 classes"),
    "checkpoint of another architecture": (
        lambda tmp: [f"teacher.checkpoint={teacher_weights(tmp, 10, [64])}"], 2,
        "a different architecture: shape of '1.weight' is (64, 64), the config's model has (1200, 64)"),
    "run dir not creatable": (lambda tmp: [f"hydra.run.dir={a_file(tmp) / 'run'}"], 2, "Not a directory"),
    "cache dir not creatable": (lambda tmp: [f"cache_dir={a_file(tmp) / 'cache'}"], 2, "cannot create the model cache"),
    "resume without an earlier run": (lambda tmp: ["resume=true"], 2, "nothing to resume"),
    "unknown fast_dropout value": (lambda tmp: ["trainer.fast_dropout=yes"], 2, "trainer.fast_dropout=yes is not known"),
    "unknown flush_denormal value": (lambda tmp: ["trainer.flush_denormal=yes"], 2, "trainer.flush_denormal=yes is not known"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_row(row: str, tmp_path: Path):
    make_arguments, exit_code, expected = ROWS[row]
    run_dir = tmp_path / "run"
    arguments = ["train", *TINY, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", *make_arguments(tmp_path)]
    result = run_kdrun(*arguments, cwd=tmp_path)
    assert_one_line_error(result, exit_code, expected)
    assert not (run_dir / "summary.json").exists()


def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "payload_ran"
    checkpoint = tmp_path / "teacher.pt"
    torch.save({"0.weight": Payload(marker)}, checkpoint)
    result = run_kdrun("train", *TINY, f"teacher.checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, 2, "was refused: not a plain weights file")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_read_only_output_dir(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable (the 'not a directory' row covers it)")
        result = run_kdrun("train", *TINY, f"hydra.run.dir={locked / 'run'}", cwd=tmp_path)
        assert_one_line_error(result, 2, "Permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path: Path):
    result = run_kdrun("train", *TINY, "device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, 2, "device 'cuda' is not available on this machine (use device=auto or device=cpu)")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_dir_that_is_not_a_run(tmp_path: Path):
    result = run_kdrun("resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert_one_line_error(result, 2, "is not a kdrun run dir")


def assert_one_line_error(result, exit_code: int, expected: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("kdrun: error: ")]
    assert result.returncode == exit_code, result.stderr
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "(" in errors[0] and errors[0].rstrip().endswith(")"), "the line names a fix in parentheses"
    assert "Traceback" not in result.stderr


def test_a_failed_download_is_one_config_error_and_the_socket_timeout_is_restored():
    import socket

    from kdrun.download import DOWNLOAD_TIMEOUT_SECONDS, downloading
    from kdrun.errors import ConfigError

    before = socket.getdefaulttimeout()
    seen = []
    with pytest.raises(ConfigError) as caught:
        with downloading("cannot fetch X", "put X in /data"):
            seen.append(socket.getdefaulttimeout())
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    assert seen == [DOWNLOAD_TIMEOUT_SECONDS] and socket.getdefaulttimeout() == before
    assert caught.value.one_line() == ("cannot fetch X (<urlopen error [Errno -3] Temporary failure in name resolution>) "
                                       "(put X in /data)")
