"""A Hydra callback that summarises a multirun sweep once its last job ends."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tinyzero.compare import compare, format_table


class SweepSummary(Callback):
    """Writes `summary.csv` and `comparison.png` into the sweep directory after `-m` runs."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            rows, png = compare([sweep_dir], sweep_dir)
        except FileNotFoundError:
            return  # every job failed before logging: nothing to summarise
        print(format_table(rows))
        print(f"sweep summary: {sweep_dir}/summary.csv, curves: {png}")
