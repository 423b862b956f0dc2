#!/usr/bin/env python3
"""The validation table behind kdrun's default run (docs/default-run.md), from kdrun sweep dirs.

    python scripts/default_run_search.py outputs/multirun/<date>/<time> [more sweep dirs]

Groups the completed jobs by their overrides except the seed, and ranks the settings by the mean
over seeds of (distilled - independent) best validation accuracy: the validation split only, never
the test split. Prints one markdown row per setting.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

IGNORED = {"seed", "trainer.progress", "trainer.threads", "cache_dir", "hydra.sweep.dir"}


def setting_of(summary: dict) -> tuple[tuple[str, str], ...]:
    overrides = dict(item.split("=", 1) for item in summary["overrides"] if "=" in item)
    return tuple(sorted((key, value) for key, value in overrides.items() if key not in IGNORED))


def collect(sweeps: list[Path]) -> dict[tuple, list[dict]]:
    """setting -> per seed: teacher, independent and distilled best validation accuracy."""
    settings: dict[tuple, list[dict]] = {}
    for sweep in sweeps:
        for summary_file in sorted(sweep.glob("*/summary.json")):
            summary = json.loads(summary_file.read_text())
            if summary.get("status") != "completed":
                continue
            phases = summary["phases"]
            settings.setdefault(setting_of(summary), []).append(
                {phase: phases[phase]["best_val_acc"] for phase in ("teacher", "independent", "distilled")})
    return settings


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def rows(settings: dict[tuple, list[dict]]) -> list[str]:
    """Markdown lines: the overrides every setting shares, then one row per setting, best mean gain first."""
    common = set.intersection(*(set(setting) for setting in settings)) if settings else set()
    ranked = []
    for setting, runs in settings.items():
        gains = [run["distilled"] - run["independent"] for run in runs]
        ranked.append((statistics.mean(gains), setting, runs, gains))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    lines = [f"In every setting: `{' '.join(f'{key}={value}' for key, value in sorted(common))}`", "",
             "| setting | seeds | teacher val | independent val | distilled val | gain (points) | distilled better |",
             "|---|---|---|---|---|---|---|"]
    for gain, setting, runs, gains in ranked:
        label = " ".join(f"{key}={value}" for key, value in setting if (key, value) not in common) or "(defaults)"
        better = sum(value > 0 for value in gains)
        lines.append(f"| `{label}` | {len(runs)} | {mean_std([run['teacher'] for run in runs])} | "
                     f"{mean_std([run['independent'] for run in runs])} | {mean_std([run['distilled'] for run in runs])} | "
                     f"{round(100 * gain, 2) + 0.0:+.2f} | {better}/{len(runs)} |")  # + 0.0: no "-0.00"
    return lines


def main(arguments: list[str]) -> int:
    if not arguments:
        print(__doc__)
        return 2
    print("\n".join(rows(collect([Path(argument) for argument in arguments]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
