"""kdrun: how much does distillation help this student, on this data, with this method?

Kept free of torch and Hydra imports so that `kdrun --help` and `import kdrun` answer instantly; the
Python API (kdrun/api.py) is loaded on first use:

    import kdrun
    summary = kdrun.run(["method=basic", "T=10"])   # the same run as `kdrun train method=basic T=10`
    kdrun.load_run(summary.run_dir).gap_recovered
    kdrun.report_table("outputs/multirun/<date>/<time>")   # the report's table as plain rows
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported when first used)
_LAZY = {
    "run": "kdrun.api", "load_run": "kdrun.api", "report_table": "kdrun.api", "report_frame": "kdrun.api",
    "RunSummary": "kdrun.results", "PhaseSummary": "kdrun.results",
    "ConfigError": "kdrun.errors", "RunError": "kdrun.errors", "Interrupted": "kdrun.errors", "KdrunError": "kdrun.errors",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdrun' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
