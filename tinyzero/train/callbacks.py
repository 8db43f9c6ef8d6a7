"""Callbacks that drive the rollout engine, evaluate on held-out prompts, and save checkpoints."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from tinyzero.analysis.evaluate import wilson_interval
from tinyzero.distributed import full_state_dict, iter_full_weights
from tinyzero.ppo.experience import score_rollouts
from tinyzero.rollout.base import RolloutEngine, SamplingParams
from tinyzero.train.checkpointing import CONFIG_KEY, prune, publish
from tinyzero.train.console import format_samples, show
from tinyzero.train.memory import phase_peak, reset_phase_peak
from tinyzero.train.run_log import METRICS_FILE, RunLog

log = logging.getLogger(__name__)


class RolloutCallback(L.Callback):
    """Runs the engine's phase cycle before each training batch and hands the rollouts over:
    wake weights → push policy weights → reset prefix cache → wake KV cache → generate → sleep.

    The engine is built in `setup`, once the ranks exist and before the trainer's models take
    memory. Every `eval_every_n_steps` steps (and at the start and the end) it scores greedy
    responses to the held-out prompts; with `dump_rollouts` each rank writes every step's
    responses to `rollouts/step_K_rank_R.jsonl` under `dump_dir`.
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
        """Wake the weights and stream the current policy in; returns the seconds it took."""
        start = time.perf_counter()
        self.engine.wake_up(["weights"])
        self.engine.load_weights(iter_full_weights(module.policy))
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
        module.set_rollouts(rollouts, {**timings, **(memory or {})})
        self._last_rollouts = rollouts

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.rl_step
        if module.device.type == "cuda":
            self.log_train_memory(trainer, step)
        if self.dump_dir is not None:
            self.dump(trainer, module, batch)
        if self.print_samples_every_n_steps and step % self.print_samples_every_n_steps == 0 and trainer.is_global_zero:
            self.print_samples(trainer, module, batch)
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

    def print_samples(self, trainer, module, batch) -> None:
        """The first response to each of `num_samples_printed` different prompts of this step."""
        first_response = {}
        for i, slot in enumerate(self._last_rollouts.prompt_index):
            first_response.setdefault(slot, i)
        chosen = list(first_response.items())[: self.num_samples_printed]
        prompts = [module.tokenizer.decode(batch["prompt_ids"][slot], skip_special_tokens=True) for slot, _ in chosen]
        scores = module.last_scores.tolist()
        text = format_samples(
            module.rl_step,
            prompts,
            [batch["ground_truth"][slot] for slot, _ in chosen],
            [module.last_texts[i] for _, i in chosen],
            [scores[i] for _, i in chosen],
        )
        show(trainer, text)

    def dump(self, trainer, module, batch) -> None:
        """This rank's responses of the step just trained: prompt index, response, score."""
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        prompt_indices = batch["index"].tolist()
        path = self.dump_dir / f"step_{module.rl_step}_rank_{trainer.global_rank}.jsonl"
        with open(path, "w") as f:
            rows = zip(self._last_rollouts.prompt_index, module.last_texts, module.last_scores.tolist())
            for slot, text, score in rows:
                f.write(json.dumps({"prompt_index": prompt_indices[slot], "response": text, "score": score}) + "\n")

    @torch.no_grad()
    def evaluate(self, trainer, module) -> dict:
        """Greedy accuracy and mean score on this rank's share of the test set, reduced over ranks."""
        self.push_weights(module)
        datamodule = trainer.datamodule
        items = datamodule.test_shard(trainer.global_rank, trainer.world_size)
        rollouts = self.generate([item["prompt_ids"] for item in items], self.eval_sampling)
        scores, _ = score_rollouts(module.task, module.tokenizer, rollouts, [item["ground_truth"] for item in items])
        totals = torch.tensor(
            [float((scores >= 1.0).sum()), float(scores.sum()), float(len(scores))], device=module.device
        )
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        low, high = wilson_interval(totals[0].item(), totals[2].item())
        result = {
            "step": module.rl_step,
            "val/accuracy": (totals[0] / totals[2]).item(),
            "val/accuracy_ci95_low": low,
            "val/accuracy_ci95_high": high,
            "val/score": (totals[1] / totals[2]).item(),
        }
        self.eval_history.append(result)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in result.items() if k != "step"}, step=module.rl_step)
        if trainer.is_global_zero:
            show(
                trainer,
                f"[step {module.rl_step}] held-out greedy accuracy {result['val/accuracy']:.3f} "
                f"(95% CI {low:.3f}-{high:.3f}, mean score {result['val/score']:.3f}, {int(totals[2])} problems)",
            )
        return result


def gpu_used_gib() -> float:
    """Memory in use on the current GPU by every allocator (vLLM's included), in GiB."""
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


class RLCheckpoint(L.Callback):
    """Saves `step_K.ckpt` every `every_n_steps` RL steps and at the end, plus the policy and
    critic in Hugging Face format (`hf/step_K/{policy,critic}`), loadable with `from_pretrained`.

    Each is written under a `.tmp` name and renamed into place once whole, so a kill during a
    save leaves the previous checkpoints intact; `keep_last` keeps only the newest few. The loggers
    are flushed first: every row of `metrics.csv` up to step K is on disk before `step_K.ckpt` is.
    A resumed run's `RunLog` carries on the history of the run that saved the checkpoint.
    `run_config` (the resolved config; scripts/train.py sets it) goes into every checkpoint, so
    that `ckpt_path=last` resumes only a run with the same settings.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 100,
        save_hf: bool = True,
        keep_last: int | None = None,
        run_config: dict | None = None,
    ):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"callbacks.checkpoint.keep_last={keep_last} must be >= 1 or null (keep all)")
        self.dirpath, self.every_n_steps, self.save_hf = Path(dirpath), every_n_steps, save_hf
        self.keep_last, self.run_config = keep_last, run_config
        self._last_saved: int | None = None
        self.resumed_at: int | None = None  # the step of the checkpoint this run resumed from

    def on_train_start(self, trainer, module) -> None:
        if trainer.ckpt_path is None:
            return
        self.resumed_at = self._last_saved = module.rl_step  # saved already: a finished run saves nothing again
        history = Path(trainer.ckpt_path).parent.parent / METRICS_FILE  # <run>/checkpoints/step_K.ckpt
        for logger in trainer.loggers:
            if isinstance(logger, RunLog):
                logger.resume(history, module.rl_step)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # The last step is saved here, not at `on_train_end`: a checkpoint taken once the epoch loop
        # has ended resumes into a finished loop, and a longer run would train no further step.
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last or (self.every_n_steps and module.rl_step % self.every_n_steps == 0):
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.save_unsaved(trainer, module)

    def save_unsaved(self, trainer, module) -> None:
        """Save this step unless it is saved already (`StopOnSignal` calls it as it stops the run)."""
        if self._last_saved != module.rl_step:
            self.save(trainer, module)

    def save(self, trainer, module) -> Path:
        step = module.rl_step
        for logger in trainer.loggers:
            logger.save()
        path = self.dirpath / f"step_{step}.ckpt"
        temporary = path.with_name(path.name + ".tmp")
        trainer.save_checkpoint(temporary, weights_only=False)  # the optimizer too: resume is exact
        export = self.dirpath / "hf" / f"step_{step}"
        export_tmp = export.with_name(export.name + ".tmp")
        if self.save_hf:
            for name, model in (("policy", module.policy), ("critic", module.critic)):
                if model is None:
                    continue
                state = full_state_dict(model)
                if trainer.is_global_zero:
                    model.save_pretrained(export_tmp / name, state_dict=state)
                    module.tokenizer.save_pretrained(export_tmp / name)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            publish(temporary, path)
            if self.save_hf:
                publish(export_tmp, export)
            if self.keep_last:
                prune(self.dirpath, self.keep_last)
        trainer.strategy.barrier()
        self._last_saved = step
        return path


class StopOnSignal(L.Callback):
    """SIGTERM / SIGUSR1 (SLURM's pre-emption notice) finish the current RL step, then stop the
    run: `RLCheckpoint` saves that step, and the script exits normally. Every rank stops together.

    The signal stops the process, not only this run: `StopOnSignal.caught` stays set, so a sweep
    whose jobs run in this process starts none after it (scripts/train.py, tinyzero.analysis.sweep)."""

    caught: str | None = None  # the name of the signal this process received; one for all instances

    @staticmethod
    def catch(signum: int, frame) -> None:
        StopOnSignal.caught = signal.Signals(signum).name

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")):
        unknown = [name for name in signals if not hasattr(signal, name)]
        if unknown:
            raise ValueError(f"callbacks.stop_on_signal.signals: {unknown} are not signals here")
        self.signals = [getattr(signal, name) for name in signals]
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, StopOnSignal.catch) for signum in self.signals}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(StopOnSignal.caught is not None, all=False):
            # a rank that got no signal stops too, and remembers it as its own
            StopOnSignal.caught = StopOnSignal.caught or "a signal on another rank"
            log.warning("%s received: stopping after step %d with a checkpoint", StopOnSignal.caught, module.rl_step)
            trainer.should_stop = True
            for callback in trainer.callbacks:
                if isinstance(callback, RLCheckpoint):
                    callback.save_unsaved(trainer, module)  # now, while the epoch is open: resumable

    def teardown(self, trainer, module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
