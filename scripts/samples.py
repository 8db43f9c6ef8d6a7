"""Write one page of the same held-out prompts' greedy responses at every evaluation step:
`python scripts/samples.py RUN_DIR [--prompts 8] [--out RUN_DIR/samples.html]`."""

import argparse
from pathlib import Path

from tinyzero.analysis.samples import write_samples

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory holding heldout/step_K.jsonl")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts shown (the first ones)")
    parser.add_argument("--out", type=Path, default=None, help="HTML path (default: RUN_DIR/samples.html)")
    args = parser.parse_args()
    try:
        print(write_samples(args.run_dir, args.out, args.prompts))
    except FileNotFoundError as err:
        parser.error(str(err))
