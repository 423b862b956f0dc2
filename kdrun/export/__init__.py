"""Export the distilled (and compressed) students: ONNX and torch.export files, checked against PyTorch.

`export=[onnx]` at the end of a run, or `kdrun export RUN_DIR` afterwards (docs/export.md). Formats
are registered by name in formats.py; the check (agreement, latency) is check.py.
"""
