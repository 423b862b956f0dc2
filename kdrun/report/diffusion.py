"""Tables and figures of `kdrun diffusion` runs: one run (printed at its end) or many (`kdrun report`).

The question is the classifier one, for samplers: at each number of sampling steps, how much better
is the distilled student than the obvious baseline, the teacher sampled with DDIM at the same steps?
Runs that differ only in their seed are aggregated (mean ± std over seeds).
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kdrun.diffusion_results import DiffusionSummary
from kdrun.files import write_bytes_atomic
from kdrun.report.load import summaries_below

PLOT = "fid_vs_steps.png"
OVERVIEW = "samples_overview.png"
HEADERS = ["steps", "teacher DDIM", "distilled", "distilled - DDIM", "DDIM s/1k", "distilled s/1k"]


@dataclass
class Aggregate:
    """Runs of one configuration (all seeds): per step count, the FIDs of every seed."""

    label: str
    runs: list[DiffusionSummary] = field(default_factory=list)

    def steps(self) -> list[int]:
        return [row.steps for row in self.runs[0].rows] if self.runs else []

    def values(self, steps: int, key: str) -> list[float]:
        found = []
        for run in self.runs:
            for row in run.rows:
                if row.steps == steps and getattr(row, key) is not None:
                    found.append(float(getattr(row, key)))
        return found

    def gaps(self, steps: int) -> list[float]:
        """distilled - DDIM per seed (negative: distillation helps), paired within each run."""
        pairs = [(row.distilled_fid, row.teacher_fid) for run in self.runs for row in run.rows if row.steps == steps]
        return [distilled - ddim for distilled, ddim in pairs if distilled is not None and ddim is not None]


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def cells(group: Aggregate, steps: int) -> list[str]:
    return [str(steps), fmt(group.values(steps, "teacher_fid")), fmt(group.values(steps, "distilled_fid")),
            fmt(group.gaps(steps)), fmt(group.values(steps, "teacher_seconds_per_1000")),
            fmt(group.values(steps, "distilled_seconds_per_1000"))]


def caption(group: Aggregate) -> str:
    first = group.runs[0]
    fid = first.fid
    floor = fmt([run.fid["floor"] for run in group.runs if run.fid.get("floor") is not None])
    return (f"{fid.get('label', 'FID')}; {fid.get('samples', '?')} samples per FID x {fid.get('noise_seeds', 1)} noise seed(s), "
            f"reference: {fid.get('reference_images', '?')} {fid.get('reference', '')} images; real test images "
            f"({fid.get('floor_images', '?')}) score {floor} (the floor). {len(group.runs)} seed(s); lower is better; "
            "s/1k: sampling seconds per 1,000 images (noisy on shared CPUs)")


def rich_table(group: Aggregate, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption(group), caption_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right", no_wrap=True)
    for steps in group.steps():
        table.add_row(*cells(group, steps))
    return table


def print_run_table(summary: DiffusionSummary, run_dir: Path, console: Any, file_log: Any) -> None:
    """The table at the end of a run, on stdout and (plain text) in train.log."""
    from rich.console import Console

    table = rich_table(Aggregate(run_dir.name, [summary]), f"kdrun diffusion: {summary.dataset.get('name', '')} ({summary.status})")
    console.print(table)
    console.print(f"run dir: {run_dir}\nreport: kdrun report {run_dir}", markup=False, highlight=False, soft_wrap=True)
    plain = Console(file=io.StringIO(), width=130, color_system=None)
    plain.print(table)
    file_log.info("%s\nrun dir: %s", plain.file.getvalue().rstrip(), run_dir)


# -- figures ----------------------------------------------------------------------------------------
def plot_fid(groups: list[Aggregate], path: Path) -> Path:
    """FID against sampling steps (log scale), DDIM dashed and distilled solid, the real-data floor dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for index, group in enumerate(groups):
        colour = f"C{index}"
        for key, style, name in (("teacher_fid", "--", "teacher DDIM"), ("distilled_fid", "-", "distilled")):
            points = [(steps, mean_std(group.values(steps, key))) for steps in group.steps()]
            points = [(steps, mean, std or 0.0) for steps, (mean, std) in points if mean is not None]
            if points:
                xs, ys, errors = zip(*points)
                axes.errorbar(xs, ys, yerr=errors, fmt=style + "o", color=colour, capsize=3, markersize=4,
                              label=f"{name}" + (f" ({group.label})" if len(groups) > 1 else ""))
        floors = [run.fid["floor"] for run in group.runs if run.fid.get("floor") is not None]
        if floors:
            axes.axhline(statistics.fmean(floors), color=colour, linestyle=":", linewidth=1, label="real test images")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")  # DDIM's FID grows by orders of magnitude at few steps
    axes.set_xlabel("sampling steps (network evaluations)")
    axes.set_ylabel(groups[0].runs[0].fid.get("kind", "FID") == "inception" and "FID (Inception)" or "FD (classifier features)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return save_figure(figure, path, dpi=120)


def plot_overview(summary: DiffusionSummary, run_dir: Path, path: Path) -> Optional[Path]:
    """One figure with every row's sample grids: teacher DDIM left, distilled right, fewest steps at the bottom."""
    grids = [(row.steps, row.teacher_grid, row.distilled_grid) for row in summary.rows if row.teacher_grid]
    if not grids:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    figure, axes = plt.subplots(len(grids), 2, figsize=(6, 3 * len(grids)), squeeze=False)
    for (steps, teacher, distilled), row_axes in zip(grids, axes):
        for axis, grid, name in zip(row_axes, (teacher, distilled), ("teacher DDIM", "distilled")):
            axis.axis("off")
            if grid and (run_dir / grid).is_file():
                axis.imshow(Image.open(run_dir / grid), cmap="gray")
                axis.set_title(f"{name}, {steps} step{'s' if steps != 1 else ''}", fontsize=9)
    return save_figure(figure, path, dpi=100)


def save_figure(figure: Any, path: Path, dpi: int) -> Path:
    """A matplotlib figure as a PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def write_run_figures(summary: DiffusionSummary, run_dir: Path) -> Optional[str]:
    """A run's own FID plot and samples overview (when it has evaluations); returns the plot's name."""
    if not any(row.teacher_fid is not None for row in summary.rows):
        return None
    plot_fid([Aggregate(run_dir.name, [summary])], run_dir / PLOT)
    plot_overview(summary, run_dir, run_dir / OVERVIEW)
    return PLOT


# -- kdrun report -----------------------------------------------------------------------------------
def load_diffusion_runs(path: Path) -> list[DiffusionSummary]:
    """Every diffusion summary.json at or below `path`."""
    return [summary for summary in summaries_below(path) if isinstance(summary, DiffusionSummary)]


def group_runs(runs: list[DiffusionSummary]) -> list[Aggregate]:
    """Completed runs grouped by their overrides without the seed; failed ones are listed, not averaged."""
    groups: dict[str, Aggregate] = {}
    for run in runs:
        if run.status != "completed":
            continue
        settings = [item for item in run.overrides if not _incidental(item.split("=", 1)[0].lstrip("+~"))]
        label = f"{run.dataset.get('name', '')} " + (" ".join(settings) or "defaults")
        groups.setdefault(label, Aggregate(label)).runs.append(run)
    return list(groups.values())


def report_diffusion_runs(path: Path) -> bool:
    """`kdrun report` for the diffusion runs at or below `path`; False when there are none."""
    from rich.console import Console

    runs = load_diffusion_runs(path)
    if not runs:
        return False
    console = Console() if Console().is_terminal else Console(width=130)
    written = build_diffusion_report(path, runs, console)
    for run in runs:
        if run.status != "completed":
            console.print(f"{run.status}: {run.run_dir} ({run.error})", markup=False, soft_wrap=True)
    console.print(f"wrote {', '.join(str(item) for item in written)}", markup=False, soft_wrap=True)
    return True


def _incidental(key: str) -> bool:
    """Overrides that do not change what a run measures: the seed (aggregated over), where and how it ran."""
    return key in ("seed", "cache_dir", "device", "resume") or key.startswith(("trainer.", "hydra."))


def build_diffusion_report(path: Path, runs: list[DiffusionSummary], console: Any) -> list[Path]:
    """report_diffusion.md, report_diffusion.csv and the FID plot in `path`; the tables on the console."""
    groups = group_runs(runs)
    written = [write_csv(runs, path / "report_diffusion.csv")]
    if groups:
        written.append(plot_fid(groups, path / PLOT))
    lines = [f"# kdrun diffusion report: {path}", "",
             f"{len(runs)} run(s): {sum(run.status == 'completed' for run in runs)} completed.", ""]
    for group in groups:
        console.print(rich_table(group, f"kdrun report: {group.label} (mean ± std over seeds)"))
        lines += [f"## {group.label}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cells(group, steps)) + " |" for steps in group.steps()]
        lines += ["", caption(group), ""]
    failed = [run for run in runs if run.status != "completed"]
    if failed:
        lines += ["## Failed or interrupted runs", "", *[f"- {run.run_dir}: {run.status} ({run.error})" for run in failed], ""]
    if groups:
        lines += [f"![FID against steps]({PLOT})", ""]
    write_bytes_atomic(path / "report_diffusion.md", "\n".join(lines).encode())
    written.append(path / "report_diffusion.md")
    return written


def write_csv(runs: list[DiffusionSummary], path: Path) -> Path:
    """One line per run and step count, as in the summaries."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["run_dir", "status", "seed", "dataset", "steps", "teacher_fid", "distilled_fid",
                     "teacher_seconds_per_1000", "distilled_seconds_per_1000", "fid_kind", "fid_samples", "overrides"])
    for run in runs:
        for row in run.rows:
            writer.writerow([run.run_dir, run.status, run.seed, run.dataset.get("name"), row.steps, row.teacher_fid,
                             row.distilled_fid, row.teacher_seconds_per_1000, row.distilled_seconds_per_1000,
                             run.fid.get("kind"), run.fid.get("samples"), " ".join(run.overrides)])
    write_bytes_atomic(path, text.getvalue().encode())
    return path
