"""Run the emergence recipe and its control and write docs/emergence_report.md and .png.

    python scripts/emergence_report.py                  # search seeds 0 1 2, control seed 0
    python scripts/emergence_report.py --seeds 0 --control-seeds 0 1 data.max_steps=100

The first run of each variant starts from an empty model cache (a fresh `paths.cache_dir` under
the report's folder), so its wall time includes pre-training; later seeds reuse that base.
Writes one row per run (held-out accuracy, response length and the search behaviours at step 0
and at the end, wall time), a figure of their held-out curves, and copies the first search run's
`behaviour.png` and `samples.html` beside them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyzero.analysis.evaluate import wilson_interval  # noqa: E402
from tinyzero.analysis.plotting import panel_grid, read_curves  # noqa: E402
from tinyzero.analysis.reports import machine, run_training  # noqa: E402

VARIANTS = {"search": "countdown_search_tiny", "control": "countdown_search_tiny_control"}
SHOWN = {
    "val/accuracy": "held-out greedy accuracy",
    "val/response_length": "response length (tokens)",
    "val/behaviour/self_verified_rate": "self-verified answers",
    "val/behaviour/attempts": "attempts per response",
    "val/behaviour/retry_after_miss_rate": "retry after a miss",
    "val/behaviour/check_honesty": "check honesty",
}


def run(variant: str, seed: int, overrides: list[str], out: Path) -> dict:
    name = f"{variant}_seed_{seed}"
    overrides = [f"experiment={VARIANTS[variant]}", f"seed={seed}", *overrides]
    overrides += [f"paths.cache_dir={out}/cache", f"paths.data_dir={out}/data"]
    run = run_training(overrides, out / name, out / f"{name}.log")
    curves = read_curves(run.run_dir)
    return {"variant": variant, "seed": seed, "run": run, "curves": {key: curves.get(key, []) for key in SHOWN}}


def ends(curve: list[tuple[int, float]]) -> tuple[float, float]:
    return curve[0][1], curve[-1][1]


def table(results: list[dict]) -> str:
    lines = [
        "| run | accuracy: step 0 → end (95 % CI) | gain | length (tokens) | self-verified | attempts "
        "| retry after a miss | check honesty | RL steps | wall (pre-training) | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["curves"]
        first, last = ends(c["val/accuracy"])
        low, high = wilson_interval(last * r["run"].problems, r["run"].problems)
        length = ends(c["val/response_length"])
        rss = f"{r['run'].peak_rss_gib:.1f} GiB" if r["run"].peak_rss_gib else "–"
        cells = [f"{a:.2f} → {b:.2f}" for a, b in (ends(c[key]) for key in list(SHOWN)[2:])]
        lines.append(
            f"| {r['variant']} seed {r['seed']} | {first:.3f} → {last:.3f} ({low:.3f}–{high:.3f}) "
            f"| {last - first:+.3f} "
            f"| {length[0]:.1f} → {length[1]:.1f} (×{length[1] / length[0]:.2f}) | {' | '.join(cells)} "
            f"| {c['val/accuracy'][-1][0]} | {r['run'].wall:.0f} s ({r['run'].pretrain:.0f} s) "
            f"| {rss} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    fig, axes = panel_grid(len(SHOWN), width=3.8, height=2.9)
    for ax, (key, title) in zip(axes, SHOWN.items()):
        for r in results:
            colour = f"C{r['seed']}" if r["variant"] == "search" else "0.5"
            style = "-" if r["variant"] == "search" else "--"
            if r["curves"][key]:
                ax.plot(
                    *zip(*r["curves"][key]),
                    style,
                    marker="o",
                    markersize=2.5,
                    color=colour,
                    label=f"{r['variant']} seed {r['seed']}",
                )
        ax.set(title=title, xlabel="RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("countdown_search_tiny (solid) and its control without search text (dashed), held-out set")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--control-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--runs", type=Path, default=None, help="where the runs go (default outputs/emergence_report/<time>)"
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args()
    runs = args.runs or ROOT / "outputs/emergence_report" / time.strftime("%Y-%m-%d_%H-%M-%S")
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for variant, seeds in (("search", args.seeds), ("control", args.control_seeds)):
        for seed in seeds:
            print(f"{variant} seed {seed} ...", flush=True)
            results.append(run(variant, seed, args.overrides, runs))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    header = (
        f"`python scripts/emergence_report.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f" on {time.strftime('%Y-%m-%d')}: {machine()}, no GPU. "
        "Each variant's first run pre-trained its base from an empty cache (the time in brackets); the held-out "
        "set is the same 128 problems for every run; behaviours are of the greedy held-out responses."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emergence_report.md").write_text(header + "\n\n" + table(results) + "\n")
    plot(results, args.out / "emergence_report.png")
    first = next(r for r in results if r["variant"] == "search")
    shutil.copy(first["run"].run_dir / "behaviour.png", args.out / "emergence_behaviour.png")
    shutil.copy(first["run"].run_dir / "samples.html", args.out / "emergence_samples.html")
    print("\n" + header + "\n\n" + table(results))
    print(f"wrote {args.out}/emergence_report.md, .png, emergence_behaviour.png, emergence_samples.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
