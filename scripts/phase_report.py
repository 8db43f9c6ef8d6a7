"""Step time by phase, tokens/s and GPU memory around sleep, from a run's metrics.csv:
`python scripts/phase_report.py RUN_DIR`."""

import csv
import sys
from pathlib import Path

COLUMNS = {
    "push s": "time/push_weights",
    "generate s": "time/generate",
    "experience s": "time/experience",
    "update s": "time/update",
    "step s": "time/step",
    "tokens/s": "perf/tokens_per_s",
    "gen tokens/s": "perf/generate_tokens_per_s",
    "GPU awake GiB": "memory/gpu_used_awake_gib",
    "GPU asleep GiB": "memory/gpu_used_asleep_gib",
}


def main(run_dir: str) -> None:
    with open(Path(run_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("time/step")]
    if not rows:
        raise SystemExit(f"no training steps logged in {run_dir}/metrics.csv")
    shown = {name: key for name, key in COLUMNS.items() if rows[0].get(key)}
    print("step " + " ".join(f"{name:>14}" for name in shown))
    for row in rows:
        print(
            f"{int(float(row['train/rl_step'])):>4} " + " ".join(f"{float(row[key]):14.3f}" for key in shown.values())
        )
    later = rows[1:] or rows  # the first step includes compilation and warm-up
    means = [sum(float(row[key]) for row in later) / len(later) for key in shown.values()]
    print(
        "mean " + " ".join(f"{value:14.3f}" for value in means) + f"   (steps {int(float(later[0]['train/rl_step']))}+)"
    )


if __name__ == "__main__":
    main(sys.argv[1])
