"""Stage c, PPO steps at the Qwen2.5-1.5B shape (random weights) for the fused Triton path and the
eager one: seconds per phase and each phase's measured peak against the memory plan; stage d, the
tiny recipe on the GPU."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from .forked import run_python
from .runs import ROOT, last_metrics, save_partial, train

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


def stage_ppo_1p5b(out: Path, small: bool) -> tuple[list[dict], bool]:
    # built in a process of its own (a fork on CPU): memory this process kept cached would count against the runs
    model_dir = random_model(out, "qwen2.5-1.5b", small)
    if model_dir is None:
        return [{"error": f"building the model failed: see {out}/model_qwen2.5-1.5b.log"}], False
    common = two_steps("countdown_1.5b", model_dir, out, small)
    common += ["algorithm.ppo_micro_batch_size=4"] if small else []
    # at toy size the fused path only: stage d runs the torch reference on CPU
    variants = {"triton fused": VARIANTS["triton fused"]} if small else VARIANTS
    rows, ok = [], True
    for name, variant in variants.items():
        code, run_dir, smi_peak = train(out, f"ppo_1.5b_{name.replace(' ', '_')}", [*common, *variant], forked=small)
        row = phase_row({"variant": name}, code, run_dir, smi_peak)
        rows.append(row)
        save_partial(out, "c", rows)
        ok = ok and code == 0 and row["steps"] == 2
    return rows, ok


def two_steps(recipe: str, model_dir: Path, out: Path, small: bool) -> list[str]:
    """Overrides for 2 steps of `recipe` on `model_dir`'s random weights with 16 generated prompts a step (4 and
    8-token responses on CPU: `small`), the engine `auto` picks (vLLM where it imports, else the compiled one;
    the log says which), no evaluation or checkpoint."""
    overrides = [
        f"experiment={recipe}",
        f"model.path={model_dir}",
        "data.source=generate",
        "data.train_size=512",
        "data.test_size=16",
        f"paths.data_dir={out}/data",
        "data.train_batch_size=16",
        "algorithm.ppo_mini_batch_size=16",
        "rollout.engine.kind=auto",
        "data.max_steps=2",
        "callbacks.rollout.eval_every_n_steps=0",
        "callbacks.rollout.print_samples_every_n_steps=0",
        "callbacks.checkpoint.every_n_steps=0",
        "callbacks.checkpoint.save_hf=false",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    if small:
        overrides += ["trainer=cpu", "rollout.max_new_tokens=8", "data.overlong_prompts=truncate"]
        overrides += ["data.train_batch_size=4", "algorithm.ppo_mini_batch_size=4"]
    return overrides


def phase_row(row: dict, code: int, run_dir: Path, smi_peak: float) -> dict:
    """`row` with a two-step run's exit status, steps, seconds per phase of its last step, and each phase's
    measured peak (the run's `memory/*` metrics) beside its plan."""
    metrics = last_metrics(run_dir)
    steps = sorted((s for s in metrics if s and "time/generate" in metrics[s]), key=float)
    row.update({"returncode": code, "steps": len(steps)})
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
    return row


# the one-GPU recipes and the card each is made for, the one no peer has first (3B with LoRA on 24 GB)
ONE_GPU_RECIPES = {"countdown_3b_lora_24gb": 24, "countdown_1.5b_24gb": 24, "countdown_3b_48gb": 48}


def random_model(out: Path, model: str, small: bool) -> Path | None:
    """A random-weight checkpoint of `conf/model/<model>.yaml`'s shape (toy-sized when `small`), built in a
    process of its own (a fork on CPU); None when that failed (its log says why)."""
    architecture = OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/model/{model}.yaml").architecture)
    if small:
        architecture.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        architecture.update(num_attention_heads=4, num_key_value_heads=2)
    model_dir = out / f"model_{model}"
    arguments = [str(model_dir), json.dumps(architecture), "cpu" if small else "cuda"]
    return (
        model_dir if run_python(["-m", "gpu.models", *arguments], out / f"{model_dir.name}.log", small) == 0 else None
    )


def stage_one_gpu_recipes(out: Path, small: bool) -> tuple[list[dict], bool]:
    """Each one-GPU recipe for 2 steps, random weights of its model's real shape, the process capped at its
    card: seconds per phase and the measured peaks against the plan, at the recipe's micro-batches and
    engine share (a smaller batch of prompts, to fit the budget). On CPU (`small`) the LoRA recipe alone, at
    toy size: CPU offload needs CUDA."""
    from hydra import compose, initialize_config_dir

    rows, ok = [], True
    for recipe, card_gib in ONE_GPU_RECIPES.items():
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"experiment={recipe}"])
        if small and cfg.trainer.strategy != "auto":
            rows.append({"recipe": recipe, "skipped": "FSDP2's CPU offload needs CUDA"})
            continue
        model = "qwen2.5-1.5b" if "1.5b" in recipe else "qwen2.5-3b"
        model_dir = random_model(out, model, small)
        if model_dir is None:
            rows.append({"recipe": recipe, "error": f"building the model failed: see {out}/model_{model}.log"})
            ok = False
            continue
        overrides = [*two_steps(recipe, model_dir, out, small), f"gpu_memory_gib={card_gib}"]  # the card's plan
        code, run_dir, smi_peak = train(out, recipe, overrides, forked=small, cap_gib=None if small else card_gib)
        log = (out / f"{recipe}.log").read_text(errors="replace")
        engine = next(
            (line.split("rollout engine: ")[1] for line in log.splitlines() if "rollout engine: " in line), "?"
        )
        row = phase_row({"recipe": recipe, "card_gib": card_gib, "engine": engine.strip()}, code, run_dir, smi_peak)
        rows.append(row)
        save_partial(out, "g", rows)
        ok = ok and code == 0 and row["steps"] == 2
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
    code, run_dir, smi_peak = train(out, "countdown_tiny", overrides, forked=small)
    metrics = last_metrics(run_dir)
    steps = [s for s in metrics if s and "time/step" in metrics[s]]
    accuracy = {s: metrics[s]["val/accuracy"] for s in metrics if s and "val/accuracy" in metrics[s]}
    log = (out / "countdown_tiny.log").read_text()
    backend = next((line.split("backend: ")[1] for line in log.splitlines() if "GAE backend: " in line), "?")
    row = {
        "returncode": code,
        "steps": len(steps),
        "s_per_step": round(sum(metrics[s]["time/step"] for s in steps) / max(len(steps), 1), 3),
        "kernels": backend.strip(),
        "val_accuracy": {int(float(s)): round(a, 3) for s, a in sorted(accuracy.items(), key=lambda x: float(x[0]))},
        "nvidia_smi_peak_gib": round(smi_peak, 2),
    }
    return [row], code == 0 and len(steps) == (2 if small else 30)
