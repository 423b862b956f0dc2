"""PNG plots (matplotlib, Agg backend: no display needed). Each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from kdrun.report.aggregate import Group, mean_std  # noqa: E402

Level = tuple[Optional[float], Optional[float]]


def accuracy_vs_temperature(groups: list[Group], teacher: Level, independent: Level, path: Path) -> Path:
    """Distilled test accuracy against T, one line per alpha, error bars = std over seeds."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for alpha in sorted({group.alpha for group in groups if group.alpha is not None}):
        points = sorted((group.T, *group.mean_std("distilled")) for group in groups if group.alpha == alpha and group.T is not None)
        points = [point for point in points if point[1] is not None]
        if points:
            axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3,
                          label=f"alpha={alpha:g}")
    draw_levels(axes, teacher, independent)
    axes.set(xlabel="temperature T", ylabel="test accuracy (best-val weights)", title="Distilled student: test accuracy vs T")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return save(figure, path)


def heatmap(groups: list[Group], teacher: Level, independent: Level, path: Path) -> Path:
    """alpha x T grid of the distilled student's mean test accuracy; colorbar marks teacher and independent."""
    alphas = sorted({group.alpha for group in groups if group.alpha is not None})
    temperatures = sorted({group.T for group in groups if group.T is not None})
    grid = [[float("nan")] * len(temperatures) for _ in alphas]
    for group in groups:
        mean, _ = group.mean_std("distilled")
        if group.alpha in alphas and group.T in temperatures and mean is not None:
            grid[alphas.index(group.alpha)][temperatures.index(group.T)] = mean
    figure, axes = plt.subplots(figsize=(1.2 * len(temperatures) + 4.5, 0.8 * len(alphas) + 3.5))
    known = [value for row in grid for value in row if value == value] + [level for level, _ in (teacher, independent) if level is not None]
    limits = (min(known), max(known)) if known else (0.0, 1.0)  # so the teacher and independent marks fit on the colorbar
    image = axes.imshow(grid, cmap="viridis", aspect="auto", origin="lower", vmin=limits[0], vmax=limits[1])
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            axes.text(column, row, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    axes.set_xticks(range(len(temperatures)), [f"{value:g}" for value in temperatures])
    axes.set_yticks(range(len(alphas)), [f"{value:g}" for value in alphas])
    axes.set(xlabel="temperature T", ylabel="alpha", title="Distilled student test accuracy")
    bar = figure.colorbar(image, ax=axes)
    for label, (level, _), style in (("teacher", teacher, "-"), ("independent", independent, "--")):
        if level is not None:
            bar.ax.axhline(level, color="red", linestyle=style)
            bar.ax.text(1.05, level, f" {label} {level:.3f}", transform=bar.ax.get_yaxis_transform(), fontsize=7, va="center")
    return save(figure, path)


def learning_curves(curves: dict[str, dict[str, dict[int, list[float]]]], path: Path) -> Path:
    """Validation accuracy per epoch for the three phases; shaded band = std over seeds."""
    figure, all_axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for axes, (phase, by_label) in zip(all_axes, curves.items()):
        for label, by_epoch in sorted(by_label.items()):
            epochs = sorted(by_epoch)
            stats = [mean_std(by_epoch[epoch]) for epoch in epochs]
            means = [mean for mean, _ in stats]
            spreads = [std for _, std in stats]
            axes.plot(epochs, means, marker=".", label=label)
            axes.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)], alpha=0.2)
        axes.set(title=phase, xlabel="epoch")
        axes.grid(alpha=0.3)
        if by_label:
            axes.legend(fontsize=7)
        else:
            axes.text(0.5, 0.5, "not trained here (cache)", ha="center", transform=axes.transAxes)
    all_axes[0].set_ylabel("validation accuracy")
    return save(figure, path)


def draw_levels(axes, teacher: Level, independent: Level) -> None:
    for label, (level, spread), color in (("teacher", teacher, "tab:green"), ("independent", independent, "tab:gray")):
        if level is not None:
            axes.axhline(level, color=color, linestyle="--", label=f"{label} {level:.3f}")
            if spread:
                axes.axhspan(level - spread, level + spread, color=color, alpha=0.15)


def save(figure, path: Path) -> Path:
    """Write via a temp name then rename, so a crash never leaves a truncated PNG."""
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.tight_layout()
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path
