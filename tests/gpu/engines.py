"""Stage e, the vLLM smoke run when vLLM imports; stage f, the compiled rollout engine against
transformers' (greedy equality, then the rollout benchmarks)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from .models import TINY_ARCHITECTURE, build_random_model
from .runs import ROOT, run_benchmarks


def stage_vllm_smoke(out: Path, small: bool) -> tuple[list[dict], bool | None]:
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        return [{"skipped": f"vLLM does not import ({error})"}], None
    result = subprocess.run(
        ["bash", "scripts/gpu_smoke.sh"],
        cwd=ROOT,
        env={**os.environ, "RUN_DIR": str(out / "gpu_smoke")},
        capture_output=True,
        text=True,
    )
    (out / "gpu_smoke.log").write_text(result.stdout + result.stderr)
    return [{"returncode": result.returncode, "report": result.stdout[-2000:]}], result.returncode == 0


def stage_rollout_engines(out: Path, small: bool) -> tuple[list[dict], bool]:
    """Greedy rollouts of the compiled engine (CUDA graphs replayed) equal transformers' on a
    random tiny Qwen2 in float32, ragged prompts; then `benchmarks/test_bench_rollout.py`."""
    from tinyzero.rollout import CompiledEngine, HFEngine, SamplingParams

    device = "cpu" if small else "cuda"
    path = build_random_model(out / "rollout_tiny", TINY_ARCHITECTURE, device)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 400, (length,), generator=gen).tolist() for length in (5, 17, 9, 30, 2, 12)]
    sampling = SamplingParams(n=1, temperature=0, max_new_tokens=48)
    responses = {}
    for engine in (
        HFEngine(str(path), 10**6, 0, device, "float32"),
        CompiledEngine(str(path), 10**6, 0, device, "float32"),
    ):
        engine.wake_up()
        responses[type(engine).__name__] = engine.generate(prompts, sampling).response_ids
        engine.sleep()
    equal = sum(a == b for a, b in zip(responses["HFEngine"], responses["CompiledEngine"]))
    rows = [{"check": "greedy rollouts equal transformers' (tiny, float32)", "equal_rows": f"{equal}/{len(prompts)}"}]
    benchmark_rows, passed = run_benchmarks(
        out, "rollout_benchmarks", "benchmarks/test_bench_rollout.py", "cpu" if small else "cuda"
    )
    rows += benchmark_rows
    return rows, equal == len(prompts) and passed
