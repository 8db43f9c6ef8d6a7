"""Per-GPU memory plan of a recipe, no GPU needed:
`python scripts/memory_plan.py experiment=countdown_3b gpu_memory_gib=80`."""

import hydra
from omegaconf import DictConfig

from tinyzero.memory import GIB, plan_for


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    if not cfg.gpu_memory_gib:
        raise SystemExit("set gpu_memory_gib=<GiB per GPU>, e.g. gpu_memory_gib=80")
    # the plan is for the GPU run: auto means vLLM there (the compiled engine where vLLM is missing)
    engine = cfg.rollout.engine.kind if cfg.rollout.engine.kind in ("hf", "compiled") else "vllm"
    gpu_bytes = cfg.gpu_memory_gib * GIB
    plan = plan_for(cfg, gpu_bytes, engine)
    print(plan.table())
    problems = plan.check(gpu_bytes)
    print("\n".join(problems) if problems else f"fits in {cfg.gpu_memory_gib} GiB per GPU")


if __name__ == "__main__":
    main()
