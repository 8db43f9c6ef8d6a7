"""Per-GPU memory plan of a recipe, no GPU needed, and what to change when it does not fit:
`python scripts/memory_plan.py experiment=countdown_3b gpu_memory_gib=80`.

Exit status: 0 the plan fits, 1 it does not, 2 a wrong argument. The config is composed with
Hydra's compose API, not `@hydra.main`: planning makes no run folder and no log file.
"""

import os
import sys
from functools import cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from tinyzero.train.memory import checkpoint_bytes_per_rank, host_bytes, plan_for
from tinyzero.train.memory_advice import advice
from tinyzero.train.memory_estimate import GIB

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def main(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):

        @cache
        def recipe_with(groups: tuple[str, ...]):
            return compose(config_name="train", overrides=overrides + list(groups))

        try:
            cfg = recipe_with(())
        except HydraException as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"memory_plan: {error}", file=sys.stderr)
            return 2
        if not cfg.gpu_memory_gib:
            print("memory_plan: set gpu_memory_gib=<GiB per GPU>, e.g. gpu_memory_gib=80", file=sys.stderr)
            return 2
        # the plan is for the GPU run: auto means vLLM there (the compiled engine where vLLM is missing)
        engine = cfg.rollout.engine.kind if cfg.rollout.engine.kind in ("hf", "compiled") else "vllm"
        gpu_bytes = cfg.gpu_memory_gib * GIB
        plan = plan_for(cfg, gpu_bytes, engine)
        print(plan.table())
        print(
            f"checkpoint: {checkpoint_bytes_per_rank(cfg) / GIB:.1f} GiB per rank, computed from the shapes "
            "(the trained weights and their AdamW moments; neither the reference nor a LoRA run's frozen base)"
        )
        problems = plan.check(gpu_bytes, host_bytes(cfg))
        print("\n".join(problems) if problems else f"fits in {cfg.gpu_memory_gib} GiB per GPU")
        for line in advice(cfg, plan, gpu_bytes, engine, recipe_with):
            print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
