"""`python -m kdrun ...` with test-only pause points, so that a test signals a run at a place it knows.

A test that polls for a file and then sends a signal races the run: on a fast or idle machine a phase of a
tiny run can end (and with it the run) before the signal lands. Here the run itself stops and waits at the
named point, so the signal always lands there, however fast or slow the machine or the test process is.

    python tests/paused_kdrun.py train ...     (same arguments as `python -m kdrun`)

Environment (all optional; without them this is plain `python -m kdrun`):
    KDRUN_TEST_MARKERS      a folder for the marker files below
    KDRUN_TEST_PAUSE_AFTER  "<phase>:<epoch>": after that epoch's checkpoint step (the file is on disk when one
                            was due), write MARKERS/paused (its text: "<phase> <epoch>") and wait until
                            MARKERS/release exists; a signal that arrives meanwhile acts there.
    KDRUN_TEST_MARK_LOCKS   "1": write MARKERS/locking-<entry> just before taking a model cache entry's lock.
    KDRUN_TEST_PAUSE_AT_STEP  "<phase>:<step>" for `kdrun diffusion`: the same pause after that optimiser step's
                            checkpoint call (phases: teacher, distill_<steps>).

Nothing of this lives in kdrun itself: it patches kdrun from the outside, in the child process only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAUSED, RELEASE = "paused", "release"


def mark(name: str, text: str = "") -> None:
    """Write a marker atomically (the test never reads half a file)."""
    folder = Path(os.environ["KDRUN_TEST_MARKERS"])
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    os.replace(temporary, folder / name)


def wait_for_release() -> None:
    release = Path(os.environ["KDRUN_TEST_MARKERS"]) / RELEASE
    while not release.exists():
        time.sleep(0.05)  # SIGINT raises KeyboardInterrupt here, inside the phase, as in a real Ctrl-C


def pause_after(owner: type, spec: str, count_of) -> None:
    """Wrap owner.save(self, phase, progress, last): after the save of "<phase>:<count>", mark and wait."""
    phase_name, count_text = spec.split(":")
    original = owner.save

    def save_then_pause(self, phase, progress, last):
        original(self, phase, progress, last)
        if phase == phase_name and count_of(progress) == int(count_text):
            mark(PAUSED, f"{phase} {count_of(progress)}")
            wait_for_release()

    owner.save = save_then_pause


def install_pause(spec: str) -> None:
    from kdrun.training import checkpoint

    pause_after(checkpoint.PhaseCheckpoint, spec, lambda progress: progress.epoch)


def install_step_pause(spec: str) -> None:
    from kdrun.diffusion import checkpoint

    pause_after(checkpoint.PhaseCheckpoints, spec, lambda state: state.step)


def install_lock_markers() -> None:
    from kdrun import model_cache

    original = model_cache.ModelCache.locked

    @contextlib.contextmanager
    def marked(self, entry):
        mark(f"locking-{entry.name}")
        with original(self, entry):
            yield

    model_cache.ModelCache.locked = marked


def main() -> None:
    # Ctrl-C as at a terminal: a process started in the background by a shell without job control (nohup,
    # `cmd &` in a script, some CI runners) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt. The test models a user pressing Ctrl-C on a foreground run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, str(REPO))
    if os.environ.get("KDRUN_TEST_PAUSE_AFTER"):
        install_pause(os.environ["KDRUN_TEST_PAUSE_AFTER"])
    if os.environ.get("KDRUN_TEST_PAUSE_AT_STEP"):
        install_step_pause(os.environ["KDRUN_TEST_PAUSE_AT_STEP"])
    if os.environ.get("KDRUN_TEST_MARK_LOCKS") == "1":
        install_lock_markers()
    from kdrun.cli import main as kdrun_main

    sys.argv[0] = "kdrun"
    kdrun_main(sys.argv[1:])


if __name__ == "__main__":
    main()
