"""Write train/test parquet files: `python scripts/make_data.py task=countdown [data.source=...]`."""

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from tinyzero.data.sources import ensure_data


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_data")
def main(cfg: DictConfig) -> None:
    task = instantiate(cfg.task)
    paths = ensure_data(task, cfg.data.dir, cfg.data.source, cfg.data.train_size, cfg.data.test_size, cfg.data.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
