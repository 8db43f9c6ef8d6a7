"""The stages of `scripts/gpu_check.py`: one GPU's acceptance of the kernels, the benchmarks, PPO
steps at the 1.5B shape (time and memory per phase against the plan), the tiny recipe on the GPU,
the vLLM smoke run, and the compiled rollout engine (greedy equality, tokens/s against
transformers). `small=True` runs each at toy sizes on CPU (kernels under the interpreter), so CI
keeps the script itself working.

Each stage returns rows (dicts) and a verdict; the script runs each in its own process with its
own time limit, so a crash or a hang in one does not stop the others.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm().clamp(min=1e-30)).item()


# ---- (a) every kernel against float64 -------------------------------------------------------


def float64_logprobs(logits, labels, temperature, grad_lp, grad_h):
    """log p(label), entropy and d/dlogits of Σ grad_lp·lp + grad_h·H, all in float64."""
    x = logits.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(x / temperature, dim=-1)
    lp = log_p.gather(-1, labels[:, None]).squeeze(-1)
    h = -(log_p.exp() * log_p.masked_fill(torch.isinf(log_p), 0)).sum(-1)
    ((lp * grad_lp.double()).sum() + (h * grad_h.double()).sum()).backward()
    return lp.detach(), h.detach(), x.grad


def float64_linear_logprobs(hidden, weight, labels, temperature, grad_lp, grad_h):
    """log p(label), entropy, d/dhidden and d/dweight of Σ grad_lp·lp + grad_h·H for
    `softmax(hidden @ weightᵀ / τ)`, all in float64."""
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(h @ w.T / temperature, dim=-1)
    lp = log_p.gather(1, labels[:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    ((lp * grad_lp.double()).sum() + (entropy * grad_h.double()).sum()).backward()
    return lp.detach(), entropy.detach(), h.grad, w.grad


def check_logprobs(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    from tinyzero.kernels.logprobs import logprobs_and_entropy, logprobs_entropy_forward

    shapes = [(70, 1000), (3, 3001)] if small else [(1, 1000), (77, 3001), (333, 151_936), (4096, 151_936)]
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for n, vocab in shapes:
            for temperature in (0.7, 1.0, 1.3):
                # strided rows (a view of a wider buffer), half of row 0 and a tenth of row 1 at −inf
                base = torch.randn(n, vocab + 37, generator=gen, device=device) * 3
                logits = base.to(dtype)[:, :vocab]
                logits[0, : vocab // 2] = float("-inf")
                if n > 1:
                    logits[1, torch.randint(vocab, (vocab // 10,), generator=gen, device=device)] = float("-inf")
                labels = torch.randint(vocab, (n,), generator=gen, device=device)
                labels[0] = vocab - 1
                if n > 1:
                    labels[1] = torch.isfinite(logits[1]).nonzero()[-1, 0]
                grad_lp = torch.randn(n, generator=gen, device=device)
                grad_h = torch.randn(n, generator=gen, device=device)
                want_lp, want_h, want_grad = float64_logprobs(logits, labels, temperature, grad_lp, grad_h)
                poisoned = [torch.full((n,), float("nan"), device=device) for _ in range(3)]
                forward = logprobs_entropy_forward(logits, labels, temperature, out=poisoned)
                x = logits.detach().clone().requires_grad_(True)
                lp, h = logprobs_and_entropy(x, labels, temperature)
                ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
                errors = {
                    "logprobs": relative_error(lp, want_lp),
                    "entropy": relative_error(h, want_h),
                    "grad": relative_error(x.grad, want_grad),
                }
                written = all(torch.isfinite(o).all().item() for o in forward) and bool(torch.isfinite(x.grad).all())
                tol = TOLERANCE[dtype]
                rows.append(
                    {
                        "kernel": "logprobs+entropy",
                        "case": f"{str(dtype)[6:]} N={n} V={vocab} T={temperature}",
                        "max_rel_error": max(errors.values()),
                        "ok": written
                        and errors["logprobs"] < tol
                        and errors["entropy"] < max(tol, 1e-5)
                        and errors["grad"] < tol,
                    }
                )
    return rows


def check_gae(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    from tinyzero.kernels.gae import gae
    from tinyzero.ppo.advantages import compute_gae

    shapes = [(65, 130), (3, 17)] if small else [(3, 17), (130, 1000), (1024, 4096)]
    rows = []
    for batch, steps in shapes:
        for gamma, lam in ((1.0, 1.0), (0.99, 0.95)):
            lengths = torch.randint(0, steps + 1, (batch,), generator=gen, device=device)
            lengths[0] = steps
            mask = (torch.arange(steps, device=device)[None] < lengths[:, None]).float()
            rewards = torch.randn(batch, steps, generator=gen, device=device)
            values = torch.randn(batch, steps, generator=gen, device=device)
            want_adv, want_ret = compute_gae(rewards.double(), values.double(), mask.double(), gamma, lam)
            out = (torch.full_like(rewards, float("nan")), torch.full_like(rewards, float("nan")))
            adv, ret = gae(rewards, values, mask, gamma, lam, out=out)
            # an absolute scale: with γλ = 1 the advantages are sums of up to T terms
            scale = max(1.0, want_adv.abs().max().item())
            error = max((adv.double() - want_adv).abs().max().item(), (ret.double() - want_ret).abs().max().item())
            rows.append(
                {
                    "kernel": "gae",
                    "case": f"B={batch} T={steps} gamma={gamma} lam={lam}",
                    "max_rel_error": error / scale,
                    "ok": bool(torch.isfinite(adv).all() and torch.isfinite(ret).all()) and error / scale < 1e-5,
                }
            )
    return rows


def check_linear_logprobs(device: str, small: bool, gen: torch.Generator) -> list[dict]:
    from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy

    shapes = [(40, 32, 300)] if small else [(1000, 1536, 151_936), (3, 64, 151_936)]
    rows = []
    for n, hidden_size, vocab in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            hidden = (torch.randn(n, hidden_size, generator=gen, device=device) / hidden_size**0.5).to(dtype)
            weight = torch.randn(vocab, hidden_size, generator=gen, device=device).to(dtype)
            labels = torch.randint(vocab, (n,), generator=gen, device=device)
            grad_lp = torch.randn(n, generator=gen, device=device)
            grad_h = torch.randn(n, generator=gen, device=device)
            want = float64_linear_logprobs(hidden, weight, labels, 0.9, grad_lp, grad_h)
            x = hidden.detach().clone().requires_grad_(True)
            w = weight.detach().clone().requires_grad_(True)
            lp, h = linear_logprobs_and_entropy(x, w, labels, temperature=0.9, backend="triton")
            ((lp * grad_lp).sum() + (h * grad_h).sum()).backward()
            errors = [relative_error(got, expected) for got, expected in zip((lp, h, x.grad, w.grad), want)]
            # float32 matmuls on a GPU use TF32 unless told otherwise: 1e-3 there, bf16 inputs 2e-2
            tol = 2e-2 if dtype == torch.bfloat16 else (1e-5 if device == "cpu" else 1e-3)
            rows.append(
                {
                    "kernel": "linear logprobs+entropy",
                    "case": f"{str(dtype)[6:]} N={n} H={hidden_size} V={vocab}",
                    "max_rel_error": max(errors),
                    "ok": max(errors) < tol,
                }
            )
    return rows


def stage_kernels(out: Path, small: bool) -> tuple[list[dict], bool]:
    device = "cpu" if small else "cuda"
    gen = torch.Generator(device).manual_seed(time.time_ns() % 2**63)  # fresh inputs on every run
    rows = []
    for check in (check_logprobs, check_gae, check_linear_logprobs):
        try:
            rows += check(device, small, gen)
        except Exception as error:  # noqa: BLE001 - a failing kernel is a row, the others still run
            rows.append({"kernel": check.__name__, "case": "raised", "error": repr(error)[:500], "ok": False})
    return rows, all(r["ok"] for r in rows)


# ---- (b) the benchmarks ---------------------------------------------------------------------


def run_benchmarks(out: Path, name: str, target: str, selection: str) -> tuple[list[dict], bool]:
    """`pytest <target> -k <selection>` in `benchmarks/`'s JSON mode: its rows (`<name>.json`, log
    beside it) and whether it passed."""
    results = out / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", target, "-k", selection, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "BENCH_OUT": str(results)},
        capture_output=True,
        text=True,
    )
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    return (json.loads(results.read_text()) if results.exists() else []), result.returncode == 0


def stage_benchmarks(out: Path, small: bool) -> tuple[list[dict], bool]:
    # torch.compile cases take minutes to compile on each shape; the table has their numbers
    # (rollout engines are stage f's)
    selection = "test_cpu_loop_gae and 256" if small else "cuda and not compile and not rollout"
    rows, passed = run_benchmarks(out, "benchmarks", "benchmarks", selection)
    return rows, passed and bool(rows)


# ---- (c) PPO steps at the 1.5B shape, (d) the tiny recipe on the GPU -------------------------


class GpuMemorySampler:
    """nvidia-smi's memory.used every 250 ms while a command runs: the peak as the driver sees it."""

    def __init__(self):
        self.peak_mib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak_mib = max(self.peak_mib, float(text.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_random_model(directory: Path, architecture: dict, device: str) -> Path:
    """A random-weight Qwen2 of `architecture`'s shape with the demo's kind of tokenizer (bf16)."""
    from tinyzero.models.tiny import build_tiny_model, build_tokenizer
    from tinyzero.tasks import CountdownTask, render_prompt

    if (directory / "config.json").exists():
        return directory
    task = CountdownTask()
    corpus = [render_prompt(task.question(row), "base") for row in task.generate(500, seed=0)]
    tokenizer = build_tokenizer(corpus, 400)
    with torch.device(device):
        model = build_tiny_model(
            architecture["vocab_size"],
            tokenizer.eos_token_id,
            hidden_size=architecture["hidden_size"],
            num_layers=architecture["num_hidden_layers"],
            num_heads=architecture["num_attention_heads"],
            num_kv_heads=architecture["num_key_value_heads"],
            intermediate_size=architecture["intermediate_size"],
            max_position_embeddings=4096,
            tie_word_embeddings=architecture["tie_word_embeddings"],
        ).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def last_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """metrics.csv as {step: {metric: value}} (a step's metrics may span several rows)."""
    by_step: dict[str, dict[str, float]] = {}
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                step = row.get("step", "")
                by_step.setdefault(step, {}).update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return by_step


def train(out: Path, name: str, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path, float]:
    run_dir = out / name
    with GpuMemorySampler() if torch.cuda.is_available() else nullcontext() as sampler:
        result = subprocess.run(
            [sys.executable, "scripts/train.py", *overrides, f"hydra.run.dir={run_dir}", "logger=csv"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    return result, run_dir, (sampler.peak_mib / 1024 if sampler else math.nan)


PHASES = ("time/generate", "time/experience", "time/update")
MEMORY_KEYS = [
    f"memory/{key}"
    for phase in ("train", "generate")
    for key in (f"{phase}_peak_gib", f"{phase}_peak_allocated_gib", f"{phase}_outside_torch_gib", f"plan_{phase}_gib")
]
# the log-prob paths compared at the 1.5B shape: the default and the eager reference (on an
# H200 each took about 150 s with the transformers engine, which generated 16 × 1024 tokens in 23
# to 65 s; the runs now take the engine `auto` picks there: vLLM or the compiled engine)
VARIANTS = {
    "triton fused": ["kernels.backend=triton", "kernels.fused_lm_head=true"],
    "torch unfused": ["kernels.backend=torch", "kernels.fused_lm_head=false"],
}


def save_partial(out: Path, stage: str, rows: list[dict]) -> None:
    """Rows so far, for the summary of a stage that runs out of time."""
    (out / f"stage_{stage}.partial.json").write_text(json.dumps(rows))


def stage_ppo_1p5b(out: Path, small: bool) -> tuple[list[dict], bool]:
    from omegaconf import OmegaConf

    architecture = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/qwen2.5-1.5b.yaml").architecture)
    if small:
        architecture.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        architecture.update(num_attention_heads=4, num_key_value_heads=2)
    model_dir = out / "model_1.5b_shape"
    # built in a process of its own: memory this process kept cached would count against the runs
    builder = "from tinyzero.acceptance import build_random_model as b; import json, sys, pathlib; "
    builder += "b(pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])"
    device = "cpu" if small else "cuda"
    subprocess.run([sys.executable, "-c", builder, str(model_dir), json.dumps(architecture), device], check=True)
    common = [
        "experiment=countdown_1.5b",
        f"model.path={model_dir}",
        "data.source=generate",
        "data.train_size=512",
        "data.test_size=16",
        f"paths.data_dir={out}/data",
        "data.train_batch_size=16",
        "algorithm.ppo_mini_batch_size=16",
        "rollout.engine.kind=auto",  # the recipe asks for vLLM; without it, the compiled engine
        "data.max_steps=2",
        "callbacks.rollout.eval_every_n_steps=0",
        "callbacks.rollout.print_samples_every_n_steps=0",
        "callbacks.checkpoint.every_n_steps=0",
        "callbacks.checkpoint.save_hf=false",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    if small:
        common += ["trainer=cpu", "rollout.max_new_tokens=8", "data.overlong_prompts=truncate"]
        common += ["data.train_batch_size=4", "algorithm.ppo_mini_batch_size=4", "algorithm.ppo_micro_batch_size=4"]
    rows, ok = [], True
    for name, variant in VARIANTS.items():
        result, run_dir, smi_peak = train(out, f"ppo_1.5b_{name.replace(' ', '_')}", [*common, *variant])
        metrics = last_metrics(run_dir)
        steps = sorted((s for s in metrics if s and "time/generate" in metrics[s]), key=float)
        row = {"variant": name, "returncode": result.returncode, "steps": len(steps)}
        if steps:
            last = metrics[steps[-1]]
            row.update({phase.split("/")[1] + "_s": round(last[phase], 2) for phase in PHASES if phase in last})
        for key in MEMORY_KEYS:
            values = [metrics[s][key] for s in metrics if key in metrics[s]]
            if values:
                row[key.split("/")[1]] = round(max(values), 2)
        row["nvidia_smi_peak_gib"] = round(smi_peak, 2)
        for phase in ("train", "generate"):
            if f"plan_{phase}_gib" in row and f"{phase}_peak_gib" in row:
                row[f"plan/measured {phase}"] = round(row[f"plan_{phase}_gib"] / row[f"{phase}_peak_gib"], 3)
        rows.append(row)
        save_partial(out, "c", rows)
        ok = ok and result.returncode == 0 and len(steps) == 2
    return rows, ok


def stage_tiny_recipe(out: Path, small: bool) -> tuple[list[dict], bool]:
    overrides = ["experiment=countdown_tiny", "callbacks.progress_bar.refresh_rate=0"]
    if small:
        # a short pre-training in a cache of its own; kernels.backend=auto picks the torch reference
        # on CPU (stage a runs the kernels under the interpreter)
        overrides += ["data.max_steps=2", "callbacks.rollout.eval_every_n_steps=2"]
        overrides += [f"paths.cache_dir={out}/cache", "model.pretrain.steps=2", "model.pretrain.num_texts=200"]
        overrides += ["data.test_size=16", f"paths.data_dir={out}/data", "data.train_size=500"]
        overrides += ["data.train_batch_size=8", "rollout.n=2", "algorithm.ppo_mini_batch_size=8"]
    else:
        overrides += ["trainer=gpu", "data.max_steps=30", "callbacks.rollout.eval_every_n_steps=30"]
        overrides += [f"paths.data_dir={out}/data"]
    result, run_dir, smi_peak = train(out, "countdown_tiny", overrides)
    metrics = last_metrics(run_dir)
    steps = [s for s in metrics if s and "time/step" in metrics[s]]
    accuracy = {s: metrics[s]["val/accuracy"] for s in metrics if s and "val/accuracy" in metrics[s]}
    log = (out / "countdown_tiny.log").read_text()
    backend = next((line.split("backend: ")[1] for line in log.splitlines() if "GAE backend: " in line), "?")
    row = {
        "returncode": result.returncode,
        "steps": len(steps),
        "s_per_step": round(sum(metrics[s]["time/step"] for s in steps) / max(len(steps), 1), 3),
        "kernels": backend.strip(),
        "val_accuracy": {int(float(s)): round(a, 3) for s, a in sorted(accuracy.items(), key=lambda x: float(x[0]))},
        "nvidia_smi_peak_gib": round(smi_peak, 2),
    }
    return [row], result.returncode == 0 and len(steps) == (2 if small else 30)


# ---- (e) vLLM ------------------------------------------------------------------------------


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


# ---- (f) the compiled rollout engine -----------------------------------------------------------

TINY_ARCHITECTURE = {
    "vocab_size": 400,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "tie_word_embeddings": True,
}


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


STAGES = {
    "a": ("kernels vs float64", stage_kernels),
    "b": ("benchmarks", stage_benchmarks),
    "c": ("PPO steps, 1.5B shape", stage_ppo_1p5b),
    "d": ("countdown_tiny on the GPU", stage_tiny_recipe),
    "e": ("vLLM smoke", stage_vllm_smoke),
    "f": ("compiled rollout engine", stage_rollout_engines),
}
