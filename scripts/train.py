"""Train: `python scripts/train.py experiment=countdown_tiny` (any recipe in conf/experiment/)."""

import hydra
import lightning as L
from omegaconf import DictConfig

from tinyzero.build import build, resume_from
from tinyzero.callbacks import RLCheckpoint, StopOnSignal
from tinyzero.checkpointing import run_config
from tinyzero.plotting import plot_run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> str:
    """Returns how the run ended, for the sweep summary (tinyzero.sweep)."""
    if StopOnSignal.caught:  # an earlier job of this sweep was stopped: start no new one
        return "not started"
    L.seed_everything(cfg.seed, workers=True)
    trainer, module, datamodule = build(cfg)
    for callback in trainer.callbacks:
        if isinstance(callback, RLCheckpoint):
            callback.run_config = run_config(cfg)  # kept in each checkpoint: `ckpt_path=last` compares it
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg))
    if trainer.is_global_zero and trainer.loggers:
        print(f"run directory: {cfg.paths.output_dir}\nlearning curves: {plot_run(cfg.paths.output_dir)}")
    return f"stopped ({StopOnSignal.caught})" if StopOnSignal.caught else "finished"


if __name__ == "__main__":
    main()
