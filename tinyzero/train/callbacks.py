"""Callbacks that save checkpoints and stop a run on a signal (the rollout engine's: `rollout_callback.py`)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L

from tinyzero.train.checkpointing import CONFIG_KEY, prune, publish
from tinyzero.train.export import save_hf
from tinyzero.train.run_log import METRICS_FILE, RunLog

log = logging.getLogger(__name__)


class RLCheckpoint(L.Callback):
    """Saves `step_K.ckpt` every `every_n_steps` RL steps and at the end, plus the policy and
    critic in Hugging Face format (`hf/step_K/{policy,critic}`), loadable with `from_pretrained`.

    Each is written under a `.tmp` name and renamed into place once whole, so a kill during a
    save leaves the previous checkpoints intact; `keep_last` (>= 1; None: all) keeps only the newest few. The loggers
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
                for folder in save_hf(model, name, module.model_cfg, export_tmp, keep=trainer.is_global_zero):
                    module.tokenizer.save_pretrained(folder)
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
