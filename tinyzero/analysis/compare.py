"""Compare runs: a table of outcomes and overlaid learning curves, from their `metrics.csv`.

Steps follow tinyzero.analysis.plotting's numbering: step k is the state after k RL updates, so a run's
`steps` is the last step it logged and `steps_to_target` the first evaluation at or above the target.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tinyzero.analysis.plotting import (
    HELDOUT,
    draw_heldout,
    draw_training,
    label_panel,
    panel_grid,
    panels_with_data,
    pyplot,
    read_curves,
    short_path,
    smoothing_label,
)

COLUMNS = ["run", "final_accuracy", "best_accuracy", "steps_to_target", "response_length", "kl", "steps", "status"]
STATUS_FILE = "status.txt"  # how the run ended, written by tinyzero.analysis.sweep.SweepSummary at each job's end


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (holding `metrics.csv`, or `status.txt` for a job that logged nothing) at or below
    each path, in a stable order."""
    runs = []
    for path in map(Path, paths):
        if path.is_dir():
            runs += sorted({p.parent for name in ("metrics.csv", STATUS_FILE) for p in path.rglob(name)})
    if not runs:
        raise FileNotFoundError(f"no run (metrics.csv or {STATUS_FILE}) under {', '.join(map(str, paths))}")
    return runs


def read_status(run: Path) -> str:
    path = run / STATUS_FILE
    return path.read_text().strip() if path.exists() else "unknown (killed?)"


def run_overrides(run: Path) -> list[str]:
    """The run's command-line overrides, as Hydra wrote them to `.hydra/overrides.yaml`."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def run_labels(runs: list[Path]) -> list[str]:
    """What tells the runs apart: the overrides not shared by all of them (else the folder name)."""
    overrides = [run_overrides(run) for run in runs]
    shared = set.intersection(*map(set, overrides)) if len(runs) > 1 else set()
    return [" ".join(o for o in own if o not in shared) or run.name for run, own in zip(runs, overrides)]


def _last(curve: list[tuple[int, float]], fraction: float = 0.1) -> float:
    tail = curve[-max(1, int(len(curve) * fraction)) :]
    return sum(v for _, v in tail) / len(tail)


def summarize(run: Path, label: str, target_accuracy: float) -> dict:
    """The run's table row; a run that logged no metrics has only its label and status."""
    if not (run / "metrics.csv").exists():
        return {**dict.fromkeys(COLUMNS), "run": label, "status": read_status(run)}
    curves = read_curves(run)
    accuracy = curves.get(HELDOUT, [])
    kl = curves.get("kl/reward_kl") or curves.get("actor/kl_loss") or []
    reached = [step for step, value in accuracy if value >= target_accuracy]
    return {
        "run": label,
        "final_accuracy": accuracy[-1][1] if accuracy else float("nan"),
        "best_accuracy": max(v for _, v in accuracy) if accuracy else float("nan"),
        "steps_to_target": reached[0] if reached else None,
        "response_length": _last(curves["response_length/mean"]) if "response_length/mean" in curves else float("nan"),
        "kl": _last(kl) if kl else float("nan"),
        "steps": max((step for curve in curves.values() for step, _ in curve), default=0),
        "status": read_status(run),
    }


def format_table(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))

    cells = [COLUMNS] + [[cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)


def comparison_figure(runs: list[Path], labels: list[str], title: str):
    """Overlaid curves of `runs` (each holding metrics.csv), one colour per run: held-out accuracy with
    its 95 % band, each per-step curve faint under its centred moving average; one legend for all."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    curves_of_runs = [read_curves(run) for run in runs]
    panels = panels_with_data(curves_of_runs)
    if not panels:
        raise FileNotFoundError(f"none of {', '.join(map(str, runs))} logged a metric that is plotted")
    fig, axes = panel_grid(len(panels), height=3.0)
    windows = set()
    for ax, (panel, keys) in zip(axes, panels):
        for index, (curves, key) in enumerate(zip(curves_of_runs, keys)):
            if key == HELDOUT:
                draw_heldout(ax, curves, f"C{index}", None, None, band_alpha=0.12)
            elif key:
                windows.add(draw_training(ax, curves[key], f"C{index}", labelled=False, faint=0.2))
        label_panel(ax, panel)
    handles = [Line2D([], [], color=f"C{i}", linewidth=1.6, label=label) for i, label in enumerate(labels)]
    if any(key == HELDOUT for _, keys in panels for key in keys):
        handles.append(Patch(color="grey", alpha=0.3, label="held-out 95 % Wilson interval"))
    if windows - {1}:
        window = windows.pop() if len(windows) == 1 else "~1/20 of each run's"
        handles.append(Line2D([], [], color="grey", linewidth=0.7, alpha=0.4, label="per step"))
        handles.append(Line2D([], [], color="grey", linewidth=1.6, label=smoothing_label(window)))
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    legend_inches = 0.25 * -(-len(handles) // 3)  # rows of the legend below the panels
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return fig


def compare(
    paths: list[str | Path], out_dir: str | Path, target_accuracy: float = 0.5
) -> tuple[list[dict], Path | None]:
    """Summaries of every run under `paths` (a sweep's jobs included, those that never logged too), with
    their status, written to `out_dir/summary.csv`; the curves of those that logged overlaid in
    `out_dir/comparison.png` (None where none logged)."""
    runs = find_runs(paths)
    labels = run_labels(runs)
    rows = [summarize(run, label, target_accuracy) for run, label in zip(runs, labels)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    logged = [(run, label) for run, label in zip(runs, labels) if (run / "metrics.csv").exists()]
    if not logged:
        return rows, None
    title = f"{len(logged)} run{'s' * (len(logged) > 1)}: {short_path(os.path.commonpath(runs))}"
    fig = comparison_figure(*map(list, zip(*logged)), title=title)
    png = out_dir / "comparison.png"
    fig.savefig(png, dpi=110)
    pyplot().close(fig)
    return rows, png
