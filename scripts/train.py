"""Train: `python scripts/train.py experiment=countdown_tiny` (any recipe in conf/experiment/)."""

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tinyzero.analysis.plotting import plot_behaviour, plot_run
from tinyzero.analysis.samples import write_samples
from tinyzero.analysis.sweep import job_process, run_in_fresh_process, tell_sweep
from tinyzero.errors import report_config_error
from tinyzero.train.build import build, resume_from
from tinyzero.train.callbacks import RLCheckpoint, StopOnSignal
from tinyzero.train.checkpointing import discard_unused_run_dir, run_config


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> str:
    """Returns how the run ended, for the sweep summary (tinyzero.analysis.sweep). A user's mistake is printed
    as its message; a single run then exits 2 and leaves no run folder, a sweep's job is marked failed. A
    sweep's job whose engine is vLLM trains in a fresh process of its own (`sweep_job_process`)."""
    hydra_cfg = HydraConfig.get()
    if StopOnSignal.caught:  # an earlier job of this sweep was stopped: start no new one
        return "not started"
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN and job_process(cfg) == "fresh":
            overrides = list(hydra_cfg.overrides.task)
            return run_in_fresh_process(__file__, hydra_cfg.job.config_name, overrides, cfg.paths.output_dir)
        status = train(cfg)
        tell_sweep(status)
        return status
    except Exception as err:
        found = report_config_error(err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return f"failed ({found})"
        if not tell_sweep(f"failed ({found})"):  # a sweep's job keeps the folder the sweep made for it
            discard_unused_run_dir(cfg.paths.output_dir, cfg.paths.log_dir)
        raise SystemExit(2) from None


def train(cfg: DictConfig) -> str:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, module, datamodule = build(cfg)
    checkpoints = [callback for callback in trainer.callbacks if isinstance(callback, RLCheckpoint)]
    for callback in checkpoints:
        callback.run_config = run_config(cfg)  # kept in each checkpoint: `ckpt_path=last` compares it
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg))
    run_dir = Path(cfg.paths.output_dir)
    finished_before = any(module.rl_step == callback.resumed_at for callback in checkpoints)
    if finished_before and (run_dir / "curves.png").exists():  # nothing trained: files untouched
        print(f"the run was already finished at step {module.rl_step}: nothing to train, nothing written")
    elif trainer.is_global_zero and trainer.loggers:  # also a run killed after its last checkpoint, before its plot
        print(f"run directory: {run_dir}\nlearning curves: {plot_run(run_dir)}")
        if cfg.callbacks.rollout.eval_every_n_steps:
            print(f"held-out behaviours: {plot_behaviour(run_dir)}\nheld-out samples: {write_samples(run_dir)}")
    return f"stopped ({StopOnSignal.caught})" if StopOnSignal.caught else "finished"


if __name__ == "__main__":
    main()
