"""The two kinds of failure a user can meet, each with a fix.

Library code raises these at the boundary where the problem is detected; only `kdrun.cli`
catches them, prints `kdrun: error: <message> (<hint>)` and exits with `exit_code` (with
HYDRA_FULL_ERROR=1 it shows the traceback instead). The one other catch is a job of a sweep, which
records its own failure in its summary and sweep row so that the other jobs still run.
"""

from __future__ import annotations

import os
import re


def tracebacks_requested() -> bool:
    """HYDRA_FULL_ERROR=1, as the user set it (kdrun sets Hydra's own copy to 1): show tracebacks, not one line."""
    return os.environ.get("KDRUN_USER_HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


class KdrunError(Exception):
    """A failure we can explain in one line, with what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The text after `kdrun: error: ` — newlines folded so it stays one line."""
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class ConfigError(KdrunError):
    """Bad input: config, overrides, paths or files the user gave us. Exit code 2."""

    exit_code = 2


class RunError(KdrunError):
    """The run started but could not complete (e.g. loss became NaN). Exit code 1."""

    exit_code = 1


class Interrupted(KdrunError):
    """The user stopped a run (Ctrl-C); its summary.json says so and `kdrun resume` continues it. Exit code 130."""

    exit_code = 130


def exception_line(error: BaseException, limit: int = 200) -> str:
    """`TypeError: message` of a foreign exception (user code, an exporter), folded to one line and cut."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # terminal colour codes (torch.onnx's messages carry them)
    return f"{type(error).__name__}: {' '.join(text.split())}"[:limit]
