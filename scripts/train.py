"""Train: `python scripts/train.py experiment=countdown_tiny` (any recipe in conf/experiment/)."""

import hydra
import lightning as L
from omegaconf import DictConfig

from tinyzero.build import build, resume_from
from tinyzero.plotting import plot_run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg))
    if trainer.is_global_zero and trainer.loggers:
        print(f"run directory: {cfg.paths.output_dir}\nlearning curves: {plot_run(cfg.paths.output_dir)}")


if __name__ == "__main__":
    main()
