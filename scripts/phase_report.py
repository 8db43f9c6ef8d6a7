"""Step time by phase, tokens/s and GPU memory around sleep, from a run's metrics.csv:
`python scripts/phase_report.py RUN_DIR`."""

import argparse
from pathlib import Path

from tinyzero.analysis.plotting import MetricsNotFound, read_steps

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


def main(run_dir: Path) -> None:
    """One line per RL step (step k: update k), then the means over the steps after the first."""
    steps = {step: values for step, values in read_steps(run_dir).items() if "time/step" in values}
    if not steps:
        raise SystemExit(f"no training steps logged in {run_dir / 'metrics.csv'}")
    shown = {name: key for name, key in COLUMNS.items() if any(key in values for values in steps.values())}
    print("step " + " ".join(f"{name:>14}" for name in shown))
    for step, values in steps.items():
        print(
            f"{step:>4} "
            + " ".join(f"{values[key]:14.3f}" if key in values else f"{'—':>14}" for key in shown.values())
        )
    later = list(steps)[1:] or list(steps)  # the first step includes compilation and warm-up
    means = []
    for key in shown.values():
        logged = [steps[step][key] for step in later if key in steps[step]]
        means.append(f"{sum(logged) / len(logged):14.3f}" if logged else f"{'—':>14}")
    print("mean " + " ".join(means) + f"   (steps {later[0]}+)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory holding metrics.csv")
    args = parser.parse_args()
    try:
        main(args.run_dir)
    except MetricsNotFound as err:
        parser.error(f"{err} (expected a folder scripts/train.py wrote, e.g. outputs/runs/<run_name>/<time>)")
