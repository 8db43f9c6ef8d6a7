"""Stage e, the vLLM smoke run when vLLM imports; stage f, the compiled rollout engine against
transformers' (greedy rows equal or diverging at a near-tie, then the rollout benchmarks)."""

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


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The index of the first token where two responses differ (None: they are equal)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def divergence_gap(model, prompt: list[int], a: list[int], b: list[int], at: int, device: str) -> tuple[float, float]:
    """At the first diverging token of two greedy responses, the trainer's forward (`model`, the same
    dtype) scores the two tokens chosen: (|logit gap| between them, the tolerance 8·ε·max|logit|, within
    which rounding alone can flip the argmax). A response that ended there (EOS) has no token: gap inf."""
    if at >= min(len(a), len(b)):
        return float("inf"), 0.0
    ids = torch.tensor([prompt + a[:at]], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    gap = (logits[a[at]] - logits[b[at]]).abs().item()
    return gap, 8 * torch.finfo(model.dtype).eps * logits.abs().max().item()


def stage_rollout_engines(out: Path, small: bool) -> tuple[list[dict], bool]:
    """Greedy rollouts of the compiled engine (CUDA graphs replayed) against transformers' on a random
    tiny Qwen2 with ragged prompts, in float32 and in bfloat16: a row passes when it is equal, or when at
    its first diverging token the two chosen tokens' logits (the trainer's forward) are within rounding
    of each other (a near-tie, no bug); then `benchmarks/test_bench_rollout.py`."""
    from tinyzero.models import load_policy
    from tinyzero.rollout import CompiledEngine, HFEngine, SamplingParams

    device = "cpu" if small else "cuda"
    path = build_random_model(out / "rollout_tiny", TINY_ARCHITECTURE, device)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 400, (length,), generator=gen).tolist() for length in (5, 17, 9, 30, 2, 12)]
    sampling = SamplingParams(n=1, temperature=0, max_new_tokens=48)
    rows, passed = [], True
    for dtype in ("float32", "bfloat16"):
        responses = {}
        for engine in (
            HFEngine(str(path), 10**6, 0, device, dtype),
            CompiledEngine(str(path), 10**6, 0, device, dtype),
        ):
            engine.wake_up()
            responses[type(engine).__name__] = engine.generate(prompts, sampling).response_ids
            engine.sleep()
        trainer = load_policy(str(path), dtype=dtype).to(device).eval()
        equal, ties, worst = 0, 0, 0.0
        for prompt, a, b in zip(prompts, responses["HFEngine"], responses["CompiledEngine"]):
            at = first_divergence(a, b)
            if at is None:
                equal += 1
                continue
            gap, tolerance = divergence_gap(trainer, prompt, a, b, at, device)
            ties += gap <= tolerance
            worst = max(worst, gap / tolerance if tolerance else float("inf"))
        rows.append(
            {
                "check": f"greedy rollouts vs transformers' (tiny, {dtype})",
                "equal_rows": f"{equal}/{len(prompts)}",
                "near_ties": ties,
                "worst_gap_over_tolerance": round(worst, 3),
            }
        )
        passed &= equal + ties == len(prompts)
    rows += sleep_cycle_rows(path, prompts, device) if device == "cuda" else []
    benchmark_rows, benchmarks_passed = run_benchmarks(
        out, "rollout_benchmarks", "benchmarks/test_bench_rollout.py", "cpu" if small else "cuda", in_process=small
    )
    return rows + benchmark_rows, passed and benchmarks_passed


def sleep_cycle_rows(path: Path, prompts: list[list[int]], device: str, steps: int = 5) -> list[dict]:
    """Seconds per rollout step's engine cycle (wake the weights, push them, wake the cache, generate 16
    tokens, sleep) of the compiled engine with and without pinned host buffers and kept graphs: the
    median of `steps` cycles after a first one."""
    import statistics
    import time

    from tinyzero.rollout import CompiledEngine, SamplingParams

    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=0)
    rows = []
    for pin_memory, keep_graphs in ((False, False), (True, False), (True, True)):
        engine = CompiledEngine(str(path), 10**6, 0, device, "bfloat16", pin_memory=pin_memory, keep_graphs=keep_graphs)
        weights = [(name, p.detach().clone().to(device)) for name, p in engine.model.named_parameters()]
        times = []
        for _ in range(steps + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.wake_up(["weights"])
            engine.load_weights(weights)
            engine.wake_up(["kv_cache"])
            engine.generate(prompts, sampling)
            engine.sleep()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "check": "engine cycle per step (tiny, bfloat16)",
                "pin_memory": pin_memory,
                "keep_graphs": keep_graphs,
                "median_s": round(statistics.median(times[1:]), 4),
                "first_s": round(times[0], 4),
            }
        )
    return rows
