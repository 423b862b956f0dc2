#!/usr/bin/env python3
"""Run the CIFAR-100 benchmark table (docs/benchmarks.md) and fill its "measured" columns.

    python scripts/cifar100_table.py run --root /data/cifar100 --seeds 0 1 2   # on a GPU machine
    python scripts/cifar100_table.py fill                                     # table from the run dirs

`run` trains every preset (KD, then DKD, per pair) with `kdrun train experiment=<preset>`, one run
dir per preset and seed under --out; the KD and DKD runs of a pair share the teacher and the
independent student through the shared cache. A finished run (summary.json says completed) is
skipped and an interrupted one resumed, so the command can simply be started again. `fill` (also
done after `run`) reads every summary.json and rewrites the table between the markers in
docs/benchmarks.md: published numbers as printed in the papers, measured ones as mean ± std (x100)
over the seeds found, "not run" where there is no completed run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- cifar100-table:begin -->", "<!-- cifar100-table:end -->"

# (teacher, student): (teacher, student) top-1 from RepDistiller's README (CRD, Tian et al. 2020, Table 1)
# and (KD, DKD) from mdistiller's README (DKD, Zhao et al. 2022, Table 1), both on the CIFAR-100 test set.
PUBLISHED = {
    ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33, 76.32),
    ("resnet56", "resnet20"): (72.34, 69.06, 70.66, 71.97),
    ("resnet110", "resnet32"): (74.31, 71.14, 73.08, 74.11),
    ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92, 76.23),
    ("wrn_40_2", "wrn_40_1"): (75.61, 71.98, 73.54, 74.81),
    ("vgg13", "vgg8"): (74.64, 70.36, 72.98, 74.68),
}
METHODS = (("KD", ""), ("DKD", "_dkd"))  # (name in the table, preset suffix)
BAD_INPUT = 2  # kdrun's exit code for a config or data error


def preset_name(teacher: str, student: str, suffix: str) -> str:
    return f"cifar100_{teacher}_{student}{suffix}"


def run_dir(out: Path, preset: str, seed: int) -> Path:
    return out / preset / f"seed_{seed}"


def run_all(root: str, seeds: list[int], out: Path, extra: list[str]) -> int:
    """Every preset and seed in turn; returns how many runs failed. Bad input (kdrun's exit code 2, e.g. no
    data under root) stops the table: every further run would fail the same way."""
    failed = 0
    for seed in seeds:
        for teacher, student in PUBLISHED:
            for _, suffix in METHODS:
                code = run_one(preset_name(teacher, student, suffix), seed, root, out, extra)
                if code == BAD_INPUT:
                    return failed + 1
                failed += int(code != 0)
    return failed


def run_one(preset: str, seed: int, root: str, out: Path, extra: list[str]) -> int:
    """One kdrun run; its exit code (0 for a run already completed)."""
    directory = run_dir(out, preset, seed)
    status = read_status(directory)
    if status == "completed":
        print(f"{preset} seed {seed}: completed, skipped", flush=True)
        return 0
    command = [sys.executable, "-m", "kdrun", "train", f"experiment={preset}", f"dataset.root={root}", f"seed={seed}",
               f"hydra.run.dir={directory}", f"cache_dir={out / 'cache'}", "trainer.progress=false", *extra]
    if status is not None:  # interrupted or failed: continue from its checkpoints
        command.append("resume=true")
    print(" ".join(command[2:]), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def read_status(directory: Path) -> str | None:
    summary = directory / "summary.json"
    return json.loads(summary.read_text()).get("status") if summary.is_file() else None


def measured(out: Path, preset: str) -> dict[str, list[float]]:
    """Test accuracies (x100, best-validation weights) of the completed runs of a preset, per phase."""
    phases: dict[str, list[float]] = {"teacher": [], "independent": [], "distilled": []}
    for summary_file in sorted((out / preset).glob("seed_*/summary.json")):
        summary = json.loads(summary_file.read_text())
        if summary.get("status") != "completed":
            continue
        for phase, values in phases.items():
            values.append(100 * summary["phases"][phase]["test_acc"])
    return phases


def mean_std(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def table(out: Path) -> str:
    """The markdown table: one row per pair and method, with its command."""
    lines = [
        "| teacher -> student | method | published teacher / student / distilled | command | measured teacher | "
        "measured independent | measured distilled |",
        "|---|---|---|---|---|---|---|",
    ]
    for (teacher, student), published in PUBLISHED.items():
        for index, (method, suffix) in enumerate(METHODS):
            preset = preset_name(teacher, student, suffix)
            runs = measured(out, preset)
            numbers = f"{published[0]:.2f} / {published[1]:.2f} / **{published[2 + index]:.2f}**"
            lines.append(
                f"| {teacher} -> {student} | {method} | {numbers} | `kdrun train experiment={preset} dataset.root=DIR` | "
                f"{mean_std(runs['teacher'])} | {mean_std(runs['independent'])} | {mean_std(runs['distilled'])} |"
            )
    return "\n".join(lines)


def fill(out: Path, doc: Path = DOC) -> None:
    """Replace the table between the markers in `doc` with one built from the run dirs under `out`."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"cifar100_table: error: {doc} has no {BEGIN} ... {END} markers (restore them from git)")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table(out)}\n{END}{tail}")
    print(f"table written to {doc} from {out}")


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "fill"))
    parser.add_argument("--root", help="folder with cifar-100-python (needed for run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "cifar100_table")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--overrides", nargs="+", default=[], help="kdrun overrides for every run, e.g. trainer.compile=true")
    options = parser.parse_args(arguments)
    failed = 0
    if options.action == "run":
        if not options.root:
            parser.error("run needs --root (the folder holding cifar-100-python)")
        failed = run_all(options.root, options.seeds, options.out.resolve(), options.overrides)
    fill(options.out.resolve(), options.doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
