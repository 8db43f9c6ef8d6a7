"""The rollout engine's phase cycle around each training step, and the held-out evaluation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from tinyzero.analysis.evaluate import wilson_interval
from tinyzero.analysis.samples import HELDOUT_DIR
from tinyzero.distributed import gather_rows
from tinyzero.models.lora import engine_weights
from tinyzero.ppo.experience import score_rollouts
from tinyzero.rollout.base import RolloutEngine, SamplingParams
from tinyzero.train.console import format_samples, show
from tinyzero.train.memory import phase_peak, reset_phase_peak


class RolloutCallback(L.Callback):
    """Runs the engine's phase cycle before each training batch and hands the rollouts over:
    wake weights → push policy weights → reset prefix cache → wake KV cache → generate → sleep.

    The engine is built in `setup`, once the ranks exist and before the trainer's models take
    memory. Every `eval_every_n_steps` steps (and at the start and the end) it scores greedy
    responses to the held-out prompts and writes them to `heldout/step_K.jsonl` under `dump_dir`;
    with `dump_rollouts` each rank writes every step's responses to `rollouts/step_K_rank_R.jsonl`.
    """

    def __init__(
        self,
        engine_factory: Callable[..., RolloutEngine],
        sampling: SamplingParams,
        eval_every_n_steps: int = 0,
        eval_max_new_tokens: int | None = None,
        print_samples_every_n_steps: int = 0,
        num_samples_printed: int = 2,
        dump_rollouts: bool = False,
        dump_dir: str = ".",
        memory_plan_gib: dict[str, float] | None = None,
    ):
        self.engine_factory, self.sampling = engine_factory, sampling
        self.memory_plan_gib = memory_plan_gib  # {"train": GiB, "generate": GiB} per GPU, on CUDA
        self.engine: RolloutEngine | None = None
        self.dump_root = dump_dir  # the run folder: held-out responses go to heldout/, rollouts to rollouts/
        self.dump_dir = Path(dump_dir) / "rollouts" if dump_rollouts else None
        self.eval_every_n_steps = eval_every_n_steps
        self.eval_sampling = SamplingParams(
            n=1, temperature=0.0, max_new_tokens=eval_max_new_tokens or sampling.max_new_tokens
        )
        self.print_samples_every_n_steps, self.num_samples_printed = print_samples_every_n_steps, num_samples_printed
        self.eval_history: list[dict] = []

    def setup(self, trainer, module, stage: str) -> None:
        if self.engine is None:
            self.engine = self.engine_factory(
                device=trainer.strategy.root_device, rank=trainer.global_rank, world_size=trainer.world_size
            )

    def push_weights(self, module) -> float:
        """Wake the weights and stream the current policy in (LoRA's adapters merged); returns the seconds it took."""
        start = time.perf_counter()
        self.engine.wake_up(["weights"])
        self.engine.load_weights(engine_weights(module.policy))
        self.engine.reset_prefix_cache()
        return time.perf_counter() - start

    def generate(self, prompt_ids, sampling: SamplingParams, memory: dict | None = None):
        """Wake the KV cache, generate, sleep; on CUDA, `memory` gets the GPU's use awake and asleep
        and the generate phase's peak (since `reset_phase_peak`, taken while the engine is awake)."""
        self.engine.wake_up(["kv_cache"])
        try:
            rollouts = self.engine.generate(prompt_ids, sampling)
            if memory is not None:
                memory["memory/gpu_used_awake_gib"] = gpu_used_gib()
                memory.update(phase_peak("generate"))
        finally:
            self.engine.sleep()
        if memory is not None:
            memory["memory/gpu_used_asleep_gib"] = gpu_used_gib()
        return rollouts

    def on_train_start(self, trainer, module) -> None:
        self._start_step = module.rl_step
        # step 0 only: a resumed run's step was evaluated before its checkpoint was saved
        if self.eval_every_n_steps and module.rl_step == 0:
            self.evaluate(trainer, module)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if module.device.type == "cuda":
            # the generate phase (push and generation) starts here; blocks the train phase left
            # cached go back to the driver, where an engine with its own allocator (vLLM) can take them
            torch.cuda.empty_cache()
            reset_phase_peak()
        timings = {"time/push_weights": self.push_weights(module)}
        # a fresh, reproducible seed per step and rank: resuming at step k samples as the first run did
        sampling = replace(self.sampling, seed=self.sampling.seed_at(module.rl_step, trainer.global_rank))
        start = time.perf_counter()
        memory = {} if module.device.type == "cuda" else None
        rollouts = self.generate(batch["prompt_ids"], sampling, memory)
        timings["time/generate"] = time.perf_counter() - start
        if memory is not None:
            reset_phase_peak()  # the train phase (experience and update) starts here
        # handed to training_step with the batch, which Lightning passes on as it is
        batch["rollouts"], batch["rollout_timings"] = rollouts, {**timings, **(memory or {})}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.rl_step
        if module.device.type == "cuda":
            self.log_train_memory(trainer, step)
        if self.dump_dir is not None:
            self.dump(trainer, step, batch, outputs)
        if self.print_samples_every_n_steps and step % self.print_samples_every_n_steps == 0 and trainer.is_global_zero:
            self.print_samples(trainer, module, step, batch, outputs)
        # the last step here too, before RLCheckpoint saves it: its held-out row is older than its checkpoint
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.eval_every_n_steps and (step % self.eval_every_n_steps == 0 or last):
            self.evaluate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        # a run stopped early (a signal) saves and leaves: no final evaluation in the grace period;
        # a resumed run that trained no step (finished) was evaluated by the run that trained it
        if trainer.should_stop or module.rl_step == self._start_step:
            return
        if self.eval_every_n_steps and (not self.eval_history or self.eval_history[-1]["step"] != module.rl_step):
            self.evaluate(trainer, module)

    def log_train_memory(self, trainer, step: int) -> None:
        """The train phase's measured peak, beside the memory plan's figure for each phase."""
        metrics = phase_peak("train")
        if self.memory_plan_gib:
            metrics.update({f"memory/plan_{phase}_gib": gib for phase, gib in self.memory_plan_gib.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def print_samples(self, trainer, module, step: int, batch: dict, outputs: dict) -> None:
        """The first response to each of `num_samples_printed` different prompts of this step
        (`outputs`: training_step's decoded `texts` and `scores`)."""
        first_response = {}
        for i, slot in enumerate(batch["rollouts"].prompt_index):
            first_response.setdefault(slot, i)
        chosen = list(first_response.items())[: self.num_samples_printed]
        prompts = [module.tokenizer.decode(batch["prompt_ids"][slot], skip_special_tokens=True) for slot, _ in chosen]
        scores = outputs["scores"].tolist()
        text = format_samples(
            step,
            prompts,
            [batch["ground_truth"][slot] for slot, _ in chosen],
            [outputs["texts"][i] for _, i in chosen],
            [scores[i] for _, i in chosen],
        )
        show(trainer, text)

    def dump(self, trainer, step: int, batch: dict, outputs: dict) -> None:
        """This rank's responses of the step just trained: prompt index, response, score."""
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        prompt_indices = batch["index"].tolist()
        path = self.dump_dir / f"step_{step}_rank_{trainer.global_rank}.jsonl"
        with open(path, "w") as f:
            rows = zip(batch["rollouts"].prompt_index, outputs["texts"], outputs["scores"].tolist())
            for slot, text, score in rows:
                f.write(json.dumps({"prompt_index": prompt_indices[slot], "response": text, "score": score}) + "\n")

    @torch.no_grad()
    def evaluate(self, trainer, module) -> dict:
        """Greedy accuracy, mean score, response length and the task's behaviours on the held-out
        set (each rank answers its share; the rows are gathered); rank 0 writes the responses to
        `heldout/step_K.jsonl` under `dump_dir`."""
        self.push_weights(module)
        items = trainer.datamodule.test_shard(trainer.global_rank, trainer.world_size)
        rollouts = self.generate([item["prompt_ids"] for item in items], self.eval_sampling)
        scores, texts = score_rollouts(
            module.task, module.tokenizer, rollouts, [item["ground_truth"] for item in items]
        )
        local = [
            {
                "index": item["index"],
                "prompt": module.tokenizer.decode(item["prompt_ids"], skip_special_tokens=True),
                "ground_truth": item["ground_truth"],
                "response": text,
                "score": score,
                "tokens": len(ids),
            }
            for item, text, score, ids in zip(items, texts, scores.tolist(), rollouts.response_ids, strict=True)
        ]
        rows = sorted(gather_rows(local), key=lambda row: row["index"])
        result = {"step": module.rl_step, **heldout_metrics(module.task, rows)}
        self.eval_history.append(result)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in result.items() if k != "step"}, step=module.rl_step)
        if trainer.is_global_zero:
            self.write_heldout(module.rl_step, rows)
            show(
                trainer,
                f"[step {module.rl_step}] held-out greedy accuracy {result['val/accuracy']:.3f} "
                f"(95% CI {result['val/accuracy_ci95_low']:.3f}-{result['val/accuracy_ci95_high']:.3f}, "
                f"mean score {result['val/score']:.3f}, {len(rows)} problems)",
            )
        return result

    def write_heldout(self, step: int, rows: list[dict]) -> None:
        folder = Path(self.dump_root) / HELDOUT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"step_{step}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def heldout_metrics(task, rows: list[dict]) -> dict[str, float]:
    """`val/*` of the held-out rows (`score`, `tokens`, `response`, `ground_truth` each): accuracy
    with its 95 % interval, mean score, mean response length in tokens, the task's behaviours."""
    solved = sum(row["score"] >= 1.0 for row in rows)
    low, high = wilson_interval(solved, len(rows))
    behaviours = task.behaviours([row["response"] for row in rows], [row["ground_truth"] for row in rows])
    return {
        "val/accuracy": solved / len(rows),
        "val/accuracy_ci95_low": low,
        "val/accuracy_ci95_high": high,
        "val/score": sum(row["score"] for row in rows) / len(rows),
        "val/response_length": sum(row["tokens"] for row in rows) / len(rows),
        **{f"val/{key}": value for key, value in behaviours.items()},
    }


def gpu_used_gib() -> float:
    """Memory in use on the current GPU by every allocator (vLLM's included), in GiB."""
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30
