"""Turn a training checkpoint into Hugging Face folders that `from_pretrained` loads:
`python scripts/export_hf.py .../checkpoints/step_K.ckpt --out DIR` writes DIR/policy (and DIR/critic with
PPO). A sharded checkpoint (a folder, `trainer=fsdp`) is read here in one process, without its ranks."""

import argparse
from pathlib import Path

from tinyzero.errors import ConfigError
from tinyzero.train.export import ROLES, export_hf

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a step_K.ckpt file or sharded folder")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write <role>/ into")
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES), help="which models (default: all)")
    args = parser.parse_args()
    try:
        for role, folder in export_hf(args.checkpoint, args.out, tuple(args.roles)).items():
            print(f"{role}: {folder}")
    except ConfigError as err:
        parser.error(str(err))
