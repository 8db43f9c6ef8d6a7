"""Compare runs: `python scripts/compare.py SWEEP_DIR [RUN_DIR ...] [--target 0.5] [--out DIR]`.

Prints final and best held-out accuracy, the first step at or above `--target`, mean response
length and KL over the last tenth of each run, its last step and how it ended (`status`); writes
summary.csv and comparison.png (overlaid curves). On a sweep folder these are the files the sweep
wrote when it ended, remade: every job, the status column included.
"""

import argparse
from pathlib import Path

from tinyzero.analysis.compare import compare, format_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--target", type=float, default=0.5, help="held-out accuracy for 'steps_to_target'")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first path)")
    args = parser.parse_args()
    try:
        rows, png = compare(args.paths, args.out or args.paths[0], args.target)
    except FileNotFoundError as err:
        parser.error(f"{err} (expected a sweep folder, outputs/multirun/<run_name>/<time>, or run folders)")
    print(format_table(rows))
    print(f"curves: {png}" if png else "no run logged metrics: no curves")
