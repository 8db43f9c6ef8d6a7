"""Draw a run's learning curves to PNG: `python scripts/plot.py RUN_DIR [--out curves.png]`."""

import argparse
from pathlib import Path

from tinyzero.analysis.plotting import MetricsNotFound, plot_run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory holding metrics.csv")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/curves.png)")
    args = parser.parse_args()
    try:
        print(plot_run(args.run_dir, args.out))
    except MetricsNotFound as err:
        parser.error(f"{err} (expected a folder scripts/train.py wrote, e.g. outputs/runs/<run_name>/<time>)")
