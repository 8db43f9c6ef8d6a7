"""The stages of `scripts/gpu_check.py`: one GPU's acceptance of the kernels, the benchmarks, PPO
steps at the 1.5B shape (time and memory per phase against the plan), the tiny recipe on the GPU,
the vLLM smoke run, and the compiled rollout engine (greedy equality, tokens/s against
transformers). `small=True` runs each at toy sizes on CPU (kernels under the interpreter), so CI
keeps the script itself working.

Each stage returns rows (dicts) and a verdict; the script runs each in its own process with its
own time limit, so a crash or a hang in one does not stop the others. Imported as `gpu`, with
`tests/` on `sys.path` (as pytest and the script put it).
"""

from .engines import stage_rollout_engines, stage_vllm_smoke
from .kernel_checks import stage_kernels
from .runs import stage_benchmarks
from .training import stage_one_gpu_recipes, stage_ppo_1p5b, stage_tiny_recipe

STAGES = {
    "a": ("kernels vs float64", stage_kernels),
    "b": ("benchmarks", stage_benchmarks),
    "c": ("PPO steps, 1.5B shape", stage_ppo_1p5b),
    "d": ("countdown_tiny on the GPU", stage_tiny_recipe),
    "e": ("vLLM smoke", stage_vllm_smoke),
    "f": ("compiled rollout engine", stage_rollout_engines),
    "g": ("one-GPU recipes (LoRA, offload)", stage_one_gpu_recipes),
}
