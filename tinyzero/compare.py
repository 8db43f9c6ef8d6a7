"""Compare runs: a table of outcomes and overlaid learning curves, from their `metrics.csv`."""

from __future__ import annotations

import csv
from pathlib import Path

from tinyzero.plotting import read_curves

COLUMNS = ["run", "final_accuracy", "best_accuracy", "steps_to_target", "response_length", "kl", "steps"]


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (holding `metrics.csv`) at or below each path, in a stable order."""
    runs = []
    for path in map(Path, paths):
        runs += sorted({p.parent for p in path.rglob("metrics.csv")}) if path.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no metrics.csv under {[str(p) for p in paths]}")
    return runs


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
    curves = read_curves(run)
    accuracy = curves.get("val/accuracy", [])
    kl = curves.get("kl/reward_kl") or curves.get("actor/kl_loss") or []
    reached = [step for step, value in accuracy if value >= target_accuracy]
    return {
        "run": label,
        "final_accuracy": accuracy[-1][1] if accuracy else float("nan"),
        "best_accuracy": max(v for _, v in accuracy) if accuracy else float("nan"),
        "steps_to_target": reached[0] if reached else None,
        "response_length": _last(curves["response_length/mean"]) if "response_length/mean" in curves else float("nan"),
        "kl": _last(kl) if kl else float("nan"),
        "steps": int(max((v for _, v in curves.get("train/rl_step", [])), default=0)),
    }


def format_table(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))

    cells = [COLUMNS] + [[cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)


def compare(paths: list[str | Path], out_dir: str | Path, target_accuracy: float = 0.5) -> tuple[list[dict], Path]:
    """Summaries of every run under `paths`, written to `out_dir/summary.csv`, and overlaid curves
    (`out_dir/comparison.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = find_runs(paths)
    rows = [summarize(run, label, target_accuracy) for run, label in zip(runs, run_labels(runs))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run, row in zip(runs, rows):
        curves = read_curves(run)
        for ax, key in zip(axes, ("val/accuracy", "score/mean", "response_length/mean")):
            if key in curves:
                steps, values = zip(*curves[key])
                ax.plot(steps, values, marker="o" if key.startswith("val/") else None, markersize=3, label=row["run"])
    for ax, title in zip(axes, ("held-out greedy accuracy", "training reward", "response length")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "comparison.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return rows, png
