"""Export: ONNX and torch.export files of the students, checked against PyTorch on test inputs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import TINY, read_summary, run_kdrun
from kdrun.errors import ConfigError
from kdrun.export.check import agreement
from kdrun.export.runner import DataDescription, export_formats, export_students
from kdrun.models import build_model
from kdrun.training.settings import ExportSettings

pytest.importorskip("onnxruntime")  # the test extra installs kdrun[export]


DATA = DataDescription(mean=[0.5], std=[0.25], classes=["a", "b", "c", "d", "e"])


def settings(*formats: str) -> ExportSettings:
    return ExportSettings(list(formats), check_samples=40, latency_batch_size=3, latency_repeats=2)


def test_agreement_counts_differences_and_top1_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    targets = torch.tensor([0, 1, 1, 0])
    shifted = logits.clone()
    shifted[2] = torch.tensor([1.0, 1.25])  # row 2 changes its top-1 class (now right), by at most 0.75
    shifted[3, 1] += 0.05  # row 3 changes by 0.05, same class
    result = agreement(lambda x: logits[x], lambda x: shifted[x], [(torch.tensor([0, 1]), targets[:2]), (torch.tensor([2, 3]), targets[2:])])
    assert result.samples == 4 and result.top1_agreement == 3 / 4
    assert result.max_abs_diff == pytest.approx(0.75)
    assert result.accuracy_pytorch == 3 / 4 and result.accuracy_exported == 1.0


@pytest.mark.parametrize("name, options", [("mlp", {"hidden": [6], "dropout": 0.5}), ("tiny_cnn", {"width": 3})])
def test_onnx_and_torch_export_files_predict_like_pytorch(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 5, **options)
    inputs, targets = torch.rand(40, 1, 8, 8), torch.randint(0, 5, (40,))
    results = export_students({"distilled": model}, inputs, targets, settings("onnx", "torch_export"), tmp_path, DATA)
    for fmt, suffix in (("onnx", ".onnx"), ("torch_export", ".pt2")):
        check = results["distilled"][fmt]
        assert check.path == str(tmp_path / f"distilled{suffix}") and check.error is None
        assert check.checked_samples == 40 and check.top1_agreement == 1.0 and check.max_abs_diff < 1e-4
        assert check.test_acc_exported == check.test_acc_pytorch and check.latency_batch_size == 3
        assert check.latency_ms_exported > 0 and check.latency_ms_pytorch > 0 and check.size_mb > 0
    import onnxruntime  # independently of kdrun's loader: another batch size (the batch axis is dynamic)

    session = onnxruntime.InferenceSession(str(tmp_path / "distilled.onnx"), providers=["CPUExecutionProvider"])
    fresh = torch.rand(7, 1, 8, 8)  # images in [0, 1]: the file normalises them as the run did
    (logits,) = session.run(None, {"input": fresh.numpy()})
    with torch.no_grad():
        expected = model.eval()((fresh - 0.5) / 0.25)
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-5)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["kdrun.classes"]) == DATA.classes and json.loads(metadata["kdrun.mean"]) == [0.5]
    extra = {"kdrun.json": ""}
    program = torch.export.load(str(tmp_path / "distilled.pt2"), extra_files=extra).module()
    assert torch.allclose(program(fresh), expected, atol=1e-6)
    assert json.loads(extra["kdrun.json"])["kdrun.phase"] == "distilled"


def test_a_file_that_predicts_otherwise_is_caught_by_the_check(tmp_path, monkeypatch):
    """Mutation: the exporter writes a model whose output bias is off by 0.5; the check must see the file."""
    import copy

    from kdrun.export.formats import Onnx

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 5, hidden=[6])
    write = Onnx.write

    def write_a_changed_copy(self, original, example, path, metadata):
        changed = copy.deepcopy(original)  # the student behind its normalisation
        with torch.no_grad():
            changed.model[-1].bias += 0.5
        write(self, changed, example, path, metadata)

    monkeypatch.setattr(Onnx, "write", write_a_changed_copy)
    inputs, targets = torch.rand(40, 1, 8, 8), torch.randint(0, 5, (40,))
    check = export_students({"distilled": model}, inputs, targets, settings("onnx"), tmp_path, DATA)["distilled"]["onnx"]
    assert check.max_abs_diff == pytest.approx(0.5, abs=1e-5)


class NotExportable(nn.Module):
    """A forward through numpy: torch.export cannot trace it, ONNX neither."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.from_numpy(inputs.flatten(1).numpy().copy()))


def test_a_model_a_format_cannot_express_is_recorded_and_the_others_still_export(tmp_path):
    inputs, targets = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    results = export_students({"distilled": plain, "odd": NotExportable()}, inputs, targets, settings("torch_export"), tmp_path, DATA)
    assert results["odd"]["torch_export"].path is None and results["odd"]["torch_export"].error
    assert not (tmp_path / "odd.pt2").exists() and not list(tmp_path.glob(".*"))  # no partial or temp file
    assert results["distilled"]["torch_export"].top1_agreement == 1.0


def test_unknown_or_repeated_formats_are_config_errors():
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_formats(["tflite"])
    with pytest.raises(ConfigError, match="lists a format twice"):
        export_formats(["onnx", "onnx"])


def test_export_at_the_end_of_a_run_and_later_with_kdrun_export(tmp_path):
    run_dir = tmp_path / "run"
    result = run_kdrun("train", *TINY, "trainer.threads=1", "export=[onnx]", "compress=[prune,quantize]",
                       "export_check.latency_repeats=3", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    exports = read_summary(run_dir)["export"]
    assert set(exports) == {"distilled", "pruned", "quantized"} and "exported students" in result.stdout
    for phase in ("distilled", "pruned"):  # float students: exported and checked on the 359 digits test images
        check = exports[phase]["onnx"]
        assert (run_dir / "export" / f"{phase}.onnx").is_file() and check["checked_samples"] == 359
        assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
        assert check["test_acc_pytorch"] == pytest.approx(read_summary(run_dir)["phases"][phase]["test_acc"])
    quantized = exports["quantized"]["onnx"]  # torchao's dynamic int8 has no ONNX kernels (onnxscript 0.7): said so
    assert (quantized["error"] and quantized["path"] is None) or (run_dir / "export" / "quantized.onnx").is_file()
    before = read_summary(run_dir)
    result = run_kdrun("export", str(run_dir), "--format", "torch_export", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    after = read_summary(run_dir)
    assert after["export"]["distilled"]["onnx"] == before["export"]["distilled"]["onnx"]  # earlier records stay
    assert after["export"]["quantized"]["torch_export"]["top1_agreement"] == 1.0
    assert {key: value for key, value in after.items() if key != "export"} == {key: value for key, value in before.items() if key != "export"}
    assert (run_dir / "export" / "pruned.pt2").is_file()


@pytest.mark.parametrize("arguments, expected", [
    (["export", "{tmp}/nowhere"], "kdrun: error: {tmp}/nowhere is not a kdrun run dir (no summary.json or .hydra/config.yaml)"),
    (["train", "export=[tflite]", "hydra.run.dir={tmp}/r"], "kdrun: error: unknown export format 'tflite'"),
])
def test_export_errors_are_one_line(tmp_path, arguments, expected):
    result = run_kdrun(*[item.format(tmp=tmp_path) for item in arguments], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(expected.format(tmp=tmp_path))
    assert not (tmp_path / "r").exists()


def test_export_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "interrupted", "phases": {"teacher": {}}}))
    result = run_kdrun("export", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2 and "is interrupted, without a distilled student to export" in result.stderr
