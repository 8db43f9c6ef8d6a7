"""Learning curves from a run's `metrics.csv` (Lightning's CSV logger).

One step numbering: `step` k is the state after k RL updates. Update k's training metrics and the
held-out evaluation after it belong to step k; the evaluation before training is step 0. A step may
be spread over several rows (the logger writes training and evaluation metrics separately): they
are merged here, the later row winning where both hold a value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELDOUT = "val/accuracy"
HELDOUT_BAND = ("val/accuracy_ci95_low", "val/accuracy_ci95_high")
STEP_LABEL = "RL step (updates done)"
SMOOTHING_FRACTION = 20  # the moving average spans about 1/20 of a run's points


@dataclass(frozen=True)
class Panel:
    keys: tuple[str, ...]  # metrics in order of preference: the first one logged is drawn
    title: str
    ylabel: str


PANELS = [
    Panel((HELDOUT,), "held-out greedy accuracy", "accuracy"),
    Panel(("score/mean",), "training reward", "mean score of the rollouts"),
    Panel(("response_length/mean",), "response length", "tokens (mean)"),
    Panel(("kl/reward_kl", "actor/kl_loss"), "KL to the reference", "KL (mean per token)"),
    Panel(("actor/entropy",), "policy entropy", "entropy (nats per token)"),
    Panel(("critic/value_loss",), "value loss", "critic loss"),
]


class MetricsNotFound(FileNotFoundError):
    """A folder that holds no logged metrics: not a training run, or one that logged nothing yet."""


def read_steps(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from `run_dir/metrics.csv`, rows of one step merged, steps ascending.

    Empty cells and rows without a step are skipped, so a missing or empty column is no error.
    """
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise MetricsNotFound(f"{path} not found: is {run_dir} a training run directory?")
    steps: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row_step(row)
            if step is None:
                continue
            values = {key: float(value) for key, value in row.items() if key != "step" and value not in ("", None)}
            steps.setdefault(step, {}).update(values)
    return dict(sorted(steps.items()))


def row_step(row: dict[str, str]) -> int | None:
    """The row's step. Files written before the one numbering logged training rows at `step` k-1 with
    `train/rl_step` k; where `train/rl_step` is set it is the step."""
    value = row.get("train/rl_step") or row.get("step")
    return int(float(value)) if value else None


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from `run_dir/metrics.csv`, steps ascending."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for step, values in read_steps(run_dir).items():
        for key, value in values.items():
            curves.setdefault(key, []).append((step, value))
    return curves


def panels_with_data(curves_of_runs: list[dict]) -> list[tuple[Panel, list[str | None]]]:
    """The panels at least one run has data for, each with the metric drawn for each run (None: none)."""
    chosen = []
    for panel in PANELS:
        keys = [next((k for k in panel.keys if k in curves), None) for curves in curves_of_runs]
        if any(keys):
            chosen.append((panel, keys))
    return chosen


def smoothing_window(points: int) -> int:
    """An odd number of points, about 1/SMOOTHING_FRACTION of them (1: too few points to smooth)."""
    window = points // SMOOTHING_FRACTION
    return window + 1 if window % 2 == 0 else window


def centred_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of `values` [N] over `window` (odd) points; at the ends, over the points
    of the window that exist (no lag, no padding)."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def smoothing_label(window: int | str) -> str:
    return f"centred mean of {window} steps"


def draw_heldout(ax, curves: dict, color: str, label: str | None, band_label: str | None, band_alpha: float) -> None:
    """Held-out accuracy as a line with markers, its 95 % interval as a band where it was logged."""
    steps, values = zip(*curves[HELDOUT])
    ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, color=color, label=label)
    low, high = (dict(curves.get(key, [])) for key in HELDOUT_BAND)
    band = [step for step in steps if step in low and step in high]
    if band:
        lows, highs = [low[s] for s in band], [high[s] for s in band]
        ax.fill_between(band, lows, highs, color=color, alpha=band_alpha, linewidth=0, label=band_label)
    ax.set_ylim(-0.02, 1.02)


def draw_training(ax, curve: list[tuple[int, float]], color: str, labelled: bool, faint: float = 0.3) -> int:
    """A per-step curve: faint (alpha `faint`), with its centred moving average over it when there are
    enough points (else the points themselves, plainly). `labelled`: give both lines a legend label.
    Returns the window (1: not smoothed)."""
    steps, values = np.array(curve).T
    window = smoothing_window(len(values))
    if window == 1:
        ax.plot(steps, values, marker="o" if len(values) <= SMOOTHING_FRACTION else None, markersize=3, color=color)
        return window
    raw, smooth = ("per step", smoothing_label(window)) if labelled else (None, None)
    ax.plot(steps, values, linewidth=0.7, alpha=faint, color=color, label=raw)
    ax.plot(steps, centred_mean(values, window), linewidth=1.6, color=color, label=smooth)
    return window


def pyplot():
    """matplotlib.pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(panels: int, width: float = 4.2, height: float = 3.2):
    """A figure with up to three panels a row; the unused cells hidden. Returns (figure, axes[panels])."""
    ncols = min(3, panels)
    nrows = -(-panels // ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:panels])


def label_panel(ax, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(STEP_LABEL, fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.grid(alpha=0.3)


def short_path(path: str | Path, parts: int = 3) -> str:
    """The last `parts` components of `path` (e.g. `runs/<run_name>/<time>`)."""
    return "/".join(Path(path).resolve().parts[-parts:])


def run_figure(run_dir: str | Path):
    """The learning curves of one run, a panel per metric it logged; a figure titled with its folder."""
    curves = read_curves(run_dir)
    panels = panels_with_data([curves])
    if not panels:
        raise MetricsNotFound(f"{Path(run_dir) / 'metrics.csv'} holds none of the metrics plotted")
    fig, axes = panel_grid(len(panels))
    for ax, (panel, [key]) in zip(axes, panels):
        if key == HELDOUT:
            draw_heldout(ax, curves, "C0", "greedy accuracy", "95 % Wilson interval", band_alpha=0.2)
        else:
            draw_training(ax, curves[key], "C0", labelled=True)
        label_panel(ax, panel)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    fig.suptitle(f"learning curves: {short_path(run_dir)}", fontsize=11)
    fig.tight_layout()
    return fig


def behaviour_figure(run_dir: str | Path):
    """Held-out accuracy, response length and each behaviour the task logged, against the RL step,
    one panel each: what the held-out evaluations say the responses do."""
    curves = read_curves(run_dir)
    if HELDOUT not in curves:
        raise MetricsNotFound(f"{Path(run_dir) / 'metrics.csv'} holds no held-out evaluation")
    keys = ["val/response_length"] + sorted(k for k in curves if k.startswith("val/behaviour/"))
    keys = [key for key in keys if key in curves]
    fig, axes = panel_grid(1 + len(keys), width=3.6, height=2.8)
    draw_heldout(axes[0], curves, "C0", None, "95 % Wilson interval", band_alpha=0.2)
    label_panel(axes[0], Panel((HELDOUT,), "held-out greedy accuracy", "accuracy"))
    for i, (ax, key) in enumerate(zip(axes[1:], keys), start=1):
        steps, values = zip(*curves[key])
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, color=f"C{i % 10}")
        name = key.removeprefix("val/").removeprefix("behaviour/")
        unit = BEHAVIOUR_UNITS.get(name, "share of responses")
        label_panel(ax, Panel((key,), name.replace("_", " "), unit))
        if unit.startswith("share"):
            ax.set_ylim(-0.02, 1.02)
    fig.suptitle(f"held-out behaviours: {short_path(run_dir)}", fontsize=11)
    fig.tight_layout()
    return fig


BEHAVIOUR_UNITS = {
    "response_length": "tokens (mean)",
    "attempts": "equations per response",
    "arithmetic_accuracy": "share of written values",
    "check_honesty": "share of 'hit' marks",
}


def save_figure(fig, out: Path) -> Path:
    partial = out.with_name(out.name + ".tmp")  # a run killed while drawing leaves no half-written PNG
    fig.savefig(partial, dpi=110, format="png")
    pyplot().close(fig)
    partial.replace(out)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw `run_dir`'s curves to `out` (default `run_dir/curves.png`); returns the PNG's path."""
    return save_figure(run_figure(run_dir), Path(out) if out else Path(run_dir) / "curves.png")


def plot_behaviour(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw `run_dir`'s held-out behaviours to `out` (default `run_dir/behaviour.png`); returns its path."""
    return save_figure(behaviour_figure(run_dir), Path(out) if out else Path(run_dir) / "behaviour.png")
