"""summary.json through kdrun/results.py: the typed objects write exactly the documented layout and read it back."""

from __future__ import annotations

import json

import pytest

from kdrun.results import PhaseSummary, RunSummary, read_summary, write_summary

# The layout of ../shared/DESIGN.md, as a completed run with a compression stage writes it (keys in this order).
COMPLETED = {
    "status": "completed",
    "run_dir": "/runs/a",
    "device": "cpu",
    "seed": 0,
    "overrides": ["method=basic", "T=10"],
    "dataset": {"name": "digits", "train": 1295, "val": 143, "test": 359, "classes": ["0", "1"]},
    "phases": {
        "teacher": {"source": "cache", "test_acc": 0.97, "test_acc_last": 0.96, "best_epoch": 6, "best_val_acc": 0.98,
                    "params": 2395210, "seconds": 0.1, "train_seconds": 12.3, "weights": "/cache/t/weights.safetensors"},
        "independent": {"source": "trained", "test_acc": 0.90, "test_acc_last": 0.89, "best_epoch": 3, "best_val_acc": 0.91,
                        "params": 1930, "seconds": 0.3, "weights": "/runs/a/independent.safetensors",
                        "cache_entry": "/cache/s/mlp-1"},
        "distilled": {"source": "trained", "test_acc": 0.92, "test_acc_last": 0.92, "best_epoch": 5, "best_val_acc": 0.93,
                      "params": 1930, "seconds": 0.4, "method": "basic", "T": 10.0, "alpha": 0.5,
                      "teacher_logits_seconds": 0.02, "weights": "/runs/a/distilled.safetensors", "extra_params": 0,
                      "nonzero_params": 1930, "size_mb": 0.01, "latency_ms": 0.2},
        "pruned": {"source": "from distilled", "test_acc": 0.91, "test_acc_last": 0.91, "best_epoch": None,
                   "best_val_acc": 0.92, "params": 1930, "seconds": 0.1, "weights": "/runs/a/pruned.safetensors",
                   "amount": 0.2, "structure": "unstructured", "nonzero_params": 1544, "size_mb": 0.01, "latency_ms": 0.2},
    },
    "gap_recovered": (0.92 - 0.90) / (0.97 - 0.90),
    "export": {  # export=[onnx]: a checked file per phase and format; a format that cannot express a model says why
        "distilled": {"onnx": {"path": "/runs/a/export/distilled.onnx", "format": "onnx", "error": None, "size_mb": 0.01,
                               "checked_samples": 359, "max_abs_diff": 2.4e-07, "top1_agreement": 1.0,
                               "test_acc_exported": 0.92, "test_acc_pytorch": 0.92, "latency_batch_size": 1,
                               "latency_ms_pytorch": 0.05, "latency_ms_exported": 0.02, "export_seconds": 1.5}},
        "pruned": {"torch_export": {"path": None, "format": "torch_export", "error": "RuntimeError: cannot trace",
                                    "size_mb": None, "checked_samples": None, "max_abs_diff": None, "top1_agreement": None,
                                    "test_acc_exported": None, "test_acc_pytorch": None, "latency_batch_size": None,
                                    "latency_ms_pytorch": None, "latency_ms_exported": None, "export_seconds": None}},
    },
    "started": "2026-11-25T05:00:43+00:00",
    "finished": "2026-11-25T05:00:49+00:00",
    "versions": {"kdrun": "0.1.0", "torch": "2.14.1"},
}
# What a multirun job that failed before training leaves behind.
FAILED_EARLY = {"status": "failed", "error": "T=0.0 must be > 0 (try T=4)", "run_dir": "/runs/b", "seed": 1,
                "overrides": ["T=0"], "phases": {}, "gap_recovered": None}


@pytest.mark.parametrize("layout", [COMPLETED, FAILED_EARLY], ids=["completed", "failed-early"])
def test_summary_json_round_trips_key_for_key_in_the_documented_order(tmp_path, layout):
    summary = RunSummary.from_json(json.loads(json.dumps(layout)))
    write_summary(tmp_path, summary)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == layout and list(written) == list(layout)
    for name, row in layout["phases"].items():
        assert list(written["phases"][name]) == list(row)
    assert read_summary(tmp_path).to_json() == layout


def test_typed_fields_and_derived_values():
    summary = RunSummary.from_json(COMPLETED)
    assert summary.phases["pruned"].extra == {"amount": 0.2, "structure": "unstructured"}
    assert summary.phases["distilled"].compressed and not summary.phases["teacher"].compressed
    assert summary.setting("method") == "basic" and summary.setting("T") == 10.0
    failed = RunSummary.from_json(FAILED_EARLY)
    assert failed.setting("T") == "0" and failed.setting("alpha") is None  # from the overrides: no distilled phase
    assert failed.gap_recovered is None and failed.dataset is None
    check = summary.export["distilled"]["onnx"]
    assert check.top1_agreement == 1.0 and check.checked_samples == 359 and check.error is None
    assert summary.export["pruned"]["torch_export"].path is None and failed.export == {}
    assert "export" not in failed.to_json()  # no export=[...]: the key is left out


def test_the_gap_is_recomputed_from_the_phases_not_trusted_from_the_file():
    tampered = {**COMPLETED, "gap_recovered": 0.99}
    assert RunSummary.from_json(tampered).to_json()["gap_recovered"] == COMPLETED["gap_recovered"]


@pytest.mark.parametrize("content", ["[1, 2]", '{"phases": [1]}', '{"phases": {"teacher": 3}}'])
def test_what_is_not_a_summary_is_a_value_error(tmp_path, content):
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(ValueError, match="not a kdrun summary"):
        read_summary(tmp_path / "summary.json")


def test_phase_rows_leave_out_unset_optional_fields_but_keep_a_null_best_epoch():
    row = PhaseSummary("checkpoint", 0.9, 0.9, None, 0.95, 100, 1.5, weights="/t.safetensors")
    assert row.to_json() == {"source": "checkpoint", "test_acc": 0.9, "test_acc_last": 0.9, "best_epoch": None,
                             "best_val_acc": 0.95, "params": 100, "seconds": 1.5, "weights": "/t.safetensors"}
