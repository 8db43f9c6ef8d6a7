"""Learning curves from a run's `metrics.csv` (Lightning's CSV logger)."""

from __future__ import annotations

import csv
from pathlib import Path

PANELS = [  # (metrics in order of preference, title)
    (("val/accuracy",), "held-out greedy accuracy"),
    (("score/mean",), "training reward (mean score)"),
    (("response_length/mean",), "response length (tokens)"),
    (("kl/reward_kl", "actor/kl_loss"), "KL to the reference"),
    (("actor/entropy",), "policy entropy"),
    (("critic/value_loss",), "value loss"),
]


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from `run_dir/metrics.csv`."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(run_dir)
    panels = [(next(k for k in keys if k in curves), title) for keys, title in PANELS if any(k in curves for k in keys)]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, panels):
        steps, values = zip(*curves[key])
        ax.plot(steps, values, marker="o" if key.startswith("val/") else None, markersize=3, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
