"""Run the CPU demo once per seed and write README's results table and a curve plot.

    python scripts/demo_report.py                       # seeds 0 1 2 (make demo-report)
    python scripts/demo_report.py --seeds 0 algorithm=grpo

Writes `docs/demo_report.md` (date, machine, command, one row per seed: held-out accuracy at
step 0 and at the end with its 95 % interval, the gain, the best, and wall time per phase) and
`docs/demo_report.png` (held-out accuracy against step, one curve per seed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyzero.analysis.evaluate import wilson_interval  # noqa: E402
from tinyzero.analysis.plotting import read_curves  # noqa: E402
from tinyzero.analysis.reports import machine, run_training  # noqa: E402

PHASES = ("time/generate", "time/experience", "time/update", "time/push_weights")


def run_seed(seed: int, overrides: list[str], out: Path) -> dict:
    run = run_training(
        ["experiment=countdown_tiny", f"seed={seed}", *overrides], out / f"seed_{seed}", out / f"seed_{seed}.log"
    )
    curves = read_curves(run.run_dir)
    return {
        "seed": seed,
        "curve": curves["val/accuracy"],
        "problems": run.problems,
        "wall": run.wall,
        "pretrain": run.pretrain,
        **{phase: sum(value for _, value in curves.get(phase, [])) for phase in PHASES},
        "steps": len(curves["time/step"]),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| seed | step 0 | final (95 % CI) | gain | best | RL steps | wall | pre-training | generate | experience "
        "| update |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (_, first), (last_step, last) = r["curve"][0], r["curve"][-1]
        low, high = wilson_interval(last * r["problems"], r["problems"])
        best_step, best = max(r["curve"], key=lambda point: point[1])
        lines.append(
            f"| {r['seed']} | {first:.3f} | {last:.3f} ({low:.3f}–{high:.3f}) at {last_step} | {last - first:+.3f} "
            f"| {best:.3f} at {best_step} | {r['steps']} | {r['wall']:.0f} s | {r['pretrain']:.0f} s "
            f"| {r['time/generate']:.0f} s | {r['time/experience']:.0f} s | {r['time/update']:.0f} s |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(*zip(*r["curve"]), marker="o", label=f"seed {r['seed']}")
    ax.set(xlabel="RL step", ylabel="held-out greedy accuracy", title="countdown_tiny, one run per seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args()
    runs = ROOT / "outputs/demo_report" / time.strftime("%Y-%m-%d_%H-%M-%S")
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        results.append(run_seed(seed, args.overrides, runs))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    header = (
        f"`python scripts/demo_report.py {' '.join(args.overrides)}`".replace(" `", "`")
        + f" on {time.strftime('%Y-%m-%d')}: {machine()}, no GPU. Pre-training is 0 s where the base model was "
        "cached already (`.cache/`); phase times are the RL steps' sums; wall is the whole command per seed."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_report.md").write_text(header + "\n\n" + table(results) + "\n")
    plot(results, args.out / "demo_report.png")
    print("\n" + header + "\n\n" + table(results))
    print(f"wrote {args.out / 'demo_report.md'} and {args.out / 'demo_report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
