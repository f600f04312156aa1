"""The report's figures (matplotlib, extra ``plots``): loss curves, optimizer-state norms, a grid heat map."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rmsprop_lightning.callbacks.state_norms import BASE_QUANTITIES
from rmsprop_lightning.logging.events import Series
from rmsprop_lightning.report.results import Configuration, Sweep, mean_std
from rmsprop_lightning.report.settings import canonical, short_number

# OptimizerStateMonitor's norm of each state over all parameter groups
STATE_TAG = re.compile(r"^optim/(?P<state>[^/]+)_norm$")
STATE_ORDER = ("square_avg", "momentum_buffer", "grad_avg")
# a legend label's line length; longer labels (a search's settings) put the legend beside its panel
LABEL_WIDTH = 48


def write_plots(sweep: Sweep, over: Sequence[str], output: Path) -> list[str]:
    """Writes every figure the sweep has data for; returns their file names."""
    configurations = sweep.configurations(over)
    keys = sweep.varying_keys(over)
    panel_keys = _panel_keys(configurations, keys)
    written = []
    for name, figure in (
        ("loss_curves.png", loss_curves(configurations, panel_keys)),
        ("optimizer_state.png", optimizer_state(configurations, panel_keys)),
        ("heatmap.png", heatmap(configurations, keys)),
    ):
        if figure is not None:
            figure.savefig(output / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            written.append(name)
    return written


def _panel_keys(configurations: Sequence[Configuration], keys: Sequence[str]) -> list[str]:
    """With two or more varying keys, the one with the fewest values splits the figures into panels."""
    if len(keys) < 2:
        return []
    return [min(keys, key=lambda key: len({canonical(c.setting[key]) for c in configurations}))]


def _panels(configurations: Sequence[Configuration], keys: Sequence[str]) -> dict[str, list[Configuration]]:
    """The configurations by their setting of ``keys`` (one panel each), titled ``key=value, ...``."""
    titles: dict[tuple[str, ...], str] = {}  # by the values of the keys, as their first spelling
    panels: dict[str, list[Configuration]] = {}
    for configuration in configurations:
        setting = configuration.setting
        same = tuple(canonical(setting[k]) for k in keys)
        title = titles.setdefault(same, ", ".join(f"{k}={short_number(setting[k])}" for k in keys))
        panels.setdefault(title, []).append(configuration)
    return panels


def _line_label(configuration: Configuration, panel_keys: Sequence[str]) -> str:
    items = [f"{k}={short_number(v)}" for k, v in configuration.setting.items() if k not in panel_keys]
    return textwrap.fill(", ".join(items), LABEL_WIDTH, break_on_hyphens=False) or configuration.label


def _height(panels: dict[str, list[Configuration]], panel_keys: Sequence[str], least: float) -> float:
    """A row's height in inches: ``least``, or what the tallest legend beside a panel needs."""
    lines = max(
        sum(_line_label(c, panel_keys).count("\n") + 1 for c in members) for members in panels.values()
    )
    return max(least, 0.16 * lines + 0.8)


def _stack(series: Sequence[Series]) -> tuple[np.ndarray, np.ndarray]:
    """Steps (union) and a runs × steps matrix with NaN where a run has no point."""
    steps = np.array(sorted({step for points in series for step, _ in points}))
    matrix = np.full((len(series), len(steps)), np.nan)
    index = {step: i for i, step in enumerate(steps)}
    for row, points in enumerate(series):
        for step, value in points:
            matrix[row, index[step]] = value
    return steps, matrix


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, ignoring NaN (the ends average fewer points)."""
    if window <= 1:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(all="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _band_plot(axis: plt.Axes, series: Sequence[Series], label: str, color) -> bool:
    """Mean over runs with a min–max band, smoothed over 2% of the steps, of the finite positive values (all
    a log axis can show); runs without one are left out. False when no run has one."""
    series = [points for points in series if any(math.isfinite(value) and value > 0 for _, value in points)]
    if not series:
        return False
    steps, matrix = _stack(series)
    window = max(1, len(steps) // 50)
    with np.errstate(all="ignore"):
        matrix = np.where(np.isfinite(matrix) & (matrix > 0), matrix, np.nan)
        mean = smooth(np.nanmean(matrix, axis=0), window)
        low, high = (smooth(reduce(matrix, axis=0), window) for reduce in (np.nanmin, np.nanmax))
    marker = "o" if len(steps) == 1 else None  # a run that diverged at its first step has one point
    axis.plot(steps, mean, label=f"{label} (n={len(series)})", color=color, linewidth=1.2, marker=marker)
    if len(series) > 1:
        axis.fill_between(steps, low, high, color=color, alpha=0.2)
    return True


def _legend_or_note(axis: plt.Axes, drawn: bool, legend: bool = True, logged: bool = True) -> None:
    """The panel's legend (where ``legend``) when it has lines, else a note saying why it has none: no value
    was ``logged``, or none was finite and positive."""
    if not drawn:
        note = "no finite positive values" if logged else "not logged by these runs"
        axis.text(0.5, 0.5, note, transform=axis.transAxes, ha="center", color="gray")
    elif legend:
        beside = any("\n" in label for label in axis.get_legend_handles_labels()[1])
        axis.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if beside else {}))


def _colors(count: int) -> list:
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def loss_curves(configurations: Sequence[Configuration], panel_keys: Sequence[str]) -> plt.Figure | None:
    """Per-step ``train/loss`` per configuration: mean over seeds, min–max band, log scale."""
    panels = _panels(configurations, panel_keys)
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.5 * len(panels), _height(panels, panel_keys, 4.5)),
        squeeze=False,
        layout="constrained",
    )
    drawn = False
    for axis, (title, members) in zip(axes[0], panels.items(), strict=True):
        panel_drawn = False
        for configuration, color in zip(members, _colors(len(members)), strict=True):
            series = [
                job.scalars.get("train/loss", []) for job in configuration.jobs if job.status != "failed"
            ]
            panel_drawn |= _band_plot(axis, series, _line_label(configuration, panel_keys), color)
        _legend_or_note(axis, panel_drawn)
        drawn |= panel_drawn
        axis.set(yscale="log", xlabel="step", ylabel="train/loss", title=title)
        axis.grid(True, which="both", alpha=0.3)
    if not drawn:
        plt.close(figure)
        return None
    figure.suptitle(
        "Training loss per step (mean over seeds, min–max band; moving average over 2% of the steps)"
    )
    return figure


def state_norms(scalars: dict[str, Series]) -> dict[str, Series]:
    """``{state: [(step, norm)]}`` of every optimizer state (not the gradient, parameter or update norms)."""
    matches = ((STATE_TAG.match(tag), points) for tag, points in scalars.items())
    return {
        match["state"]: points for match, points in matches if match and match["state"] not in BASE_QUANTITIES
    }


def optimizer_state(configurations: Sequence[Configuration], panel_keys: Sequence[str]) -> plt.Figure | None:
    """The norm of each optimizer state (over all groups) per configuration over steps."""
    norms = {id(job): state_norms(job.scalars) for c in configurations for job in c.jobs}
    states = sorted({state for per_job in norms.values() for state in per_job}, key=_state_rank)
    if not states:
        return None
    panels = _panels(configurations, panel_keys)
    figure, axes = plt.subplots(
        len(panels),
        len(states),
        figsize=(5 * len(states), _height(panels, panel_keys, 3.8) * len(panels)),
        squeeze=False,
        layout="constrained",
    )
    for row, (title, members) in enumerate(panels.items()):
        legend = True  # on the row's first panel with lines
        for column, state in enumerate(states):
            axis = axes[row][column]
            drawn = logged = False
            for configuration, color in zip(members, _colors(len(members)), strict=True):
                series = [norms[id(job)].get(state, []) for job in configuration.jobs]
                drawn |= _band_plot(axis, series, _line_label(configuration, panel_keys), color)
                logged |= any(series)
            _legend_or_note(axis, drawn, legend, logged)
            legend &= not drawn
            axis.set(yscale="log", xlabel="step", ylabel=f"‖{state}‖", title=f"{title} {state}".strip())
            axis.grid(True, which="both", alpha=0.3)
    figure.suptitle("Optimizer state norms (mean over seeds, min–max band)")
    return figure


def _state_rank(state: str) -> tuple[int, str]:
    return (STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER), state)


def _numeric(values: set[str]) -> bool:
    try:
        [float(value) for value in values]
    except ValueError:
        return False
    return True


def _grid_axis(members: Sequence[Configuration], key: str) -> dict[str, str]:
    """A heat map axis: each value of ``key`` (``1e-8`` and ``1.0e-08`` one) as first spelled, in order."""
    spelled: dict[str, str] = {}
    for configuration in members:
        spelled.setdefault(canonical(configuration.setting[key]), configuration.setting[key])
    return dict(sorted(spelled.items(), key=lambda item: float(item[1])))


def heatmap(configurations: Sequence[Configuration], keys: Sequence[str]) -> plt.Figure | None:
    """Mean best ``val/loss`` over a grid of exactly two numeric keys, one panel per other setting."""
    numeric = [k for k in keys if _numeric({c.setting[k] for c in configurations})]
    if len(numeric) != 2:
        return None
    x_key, y_key = numeric
    panels = _panels(configurations, [k for k in keys if k not in numeric])
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False, layout="constrained"
    )
    for axis, (title, members) in zip(axes[0], panels.items(), strict=True):
        xs, ys = (_grid_axis(members, key) for key in (x_key, y_key))
        grid = np.full((len(ys), len(xs)), np.nan)
        for c in members:
            row, column = (
                list(ys).index(canonical(c.setting[y_key])),
                list(xs).index(canonical(c.setting[x_key])),
            )
            grid[row, column] = mean_std(c.values("best", "val/loss"))[0]
        with np.errstate(all="ignore"):
            image = axis.imshow(np.log10(grid), cmap="viridis_r", aspect="auto", origin="lower")
        for (i, j), value in np.ndenumerate(grid):
            shade = image.norm(np.log10(value)) if value > 0 else 0.0
            text = "—" if math.isnan(value) else f"{value:.3g}"
            axis.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if shade > 0.6 else "black"
            )
        axis.set_xticks(range(len(xs)), [short_number(x) for x in xs.values()])
        axis.set_yticks(range(len(ys)), [short_number(y) for y in ys.values()])
        axis.set(xlabel=x_key, ylabel=y_key, title=title)
        figure.colorbar(image, ax=axis, label="log10 mean best val/loss")
    figure.suptitle("Best validation loss over the grid (mean over seeds)")
    return figure
