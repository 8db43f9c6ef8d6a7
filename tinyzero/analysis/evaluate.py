"""Score a checkpoint (ours or any Hugging Face model directory) on a task's test set."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinyzero.data.datamodule import PromptSet
from tinyzero.data.sources import held_out_rows
from tinyzero.errors import ConfigError, MissingFileError
from tinyzero.models.loading import load_tokenizer
from tinyzero.ppo.experience import score_rollouts
from tinyzero.rollout import HFEngine, SamplingParams
from tinyzero.train.checkpointing import checkpoint_step
from tinyzero.train.export import export_hf


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % for z = 1.96): how far a held-out
    accuracy can move by chance alone; with 128 problems one problem is 0.008 but the interval
    around 0.5 is ±0.085."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def model_dir(checkpoint: str | Path, scratch: str | Path) -> Path:
    """The Hugging Face folder of `checkpoint`: itself, or for a training checkpoint `step_K.ckpt` the
    policy exported beside it (`hf/step_K/policy`), else its policy weights written under `scratch`."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "config.json").exists():
        return checkpoint
    if not checkpoint.exists():
        raise MissingFileError(f"checkpoint={checkpoint} does not exist")
    if checkpoint.suffix != ".ckpt":
        raise ConfigError(f"checkpoint={checkpoint} is neither a Hugging Face model folder nor a step_K.ckpt")
    step = checkpoint_step(checkpoint)
    export = checkpoint.parent / "hf" / f"step_{step}" / "policy"
    if (export / "config.json").exists():
        return export
    return export_hf(checkpoint, Path(scratch) / f"step_{step}", roles=("policy",))["policy"]


def evaluate_checkpoint(
    checkpoint: str,
    task,
    data_cfg,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    output: str | Path,
    device: str = "cpu",
) -> dict[str, float]:
    """Greedy accuracy and pass@`samples` with the training reward, and the greedy responses' mean
    length (tokens) and the task's `behaviour/*`; per-problem JSONL at `output`.
    `checkpoint`: a Hugging Face model folder or a training checkpoint `step_K.ckpt`."""
    checkpoint = model_dir(checkpoint, Path(output).parent)
    tokenizer = load_tokenizer(checkpoint)
    rows = held_out_rows(task, data_cfg)
    problems = PromptSet(
        task, tokenizer, rows, data_cfg.template, data_cfg.max_prompt_length, "test", data_cfg.overlong_prompts
    ).items
    prompts = [p["prompt_ids"] for p in problems]
    truths = [p["ground_truth"] for p in problems]
    engine = HFEngine(checkpoint, tokenizer.eos_token_id, tokenizer.pad_token_id, device=device)
    engine.wake_up()
    greedy = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    greedy_scores, greedy_texts = score_rollouts(task, tokenizer, greedy, truths)
    sampled = engine.generate(
        prompts, SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    )
    sampled_scores, sampled_texts = score_rollouts(task, tokenizer, sampled, truths)
    engine.sleep()
    sampled_scores = sampled_scores.view(len(problems), samples)
    solved = (sampled_scores >= 1.0).any(-1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as f:
        for i, problem in enumerate(problems):
            f.write(
                json.dumps(
                    {
                        "prompt": tokenizer.decode(problem["prompt_ids"]),
                        "ground_truth": problem["ground_truth"],
                        "response": greedy_texts[i],
                        "score": greedy_scores[i].item(),
                        "samples": sampled_texts[i * samples : (i + 1) * samples],
                        "sample_scores": sampled_scores[i].tolist(),
                    }
                )
                + "\n"
            )
    return {
        "accuracy": (greedy_scores >= 1.0).float().mean().item(),
        "mean_score": greedy_scores.mean().item(),
        f"pass@{samples}": solved.float().mean().item(),
        "problems": float(len(problems)),
        "response_length": sum(map(len, greedy.response_ids)) / len(problems),
        **task.behaviours(greedy_texts, truths),
    }
