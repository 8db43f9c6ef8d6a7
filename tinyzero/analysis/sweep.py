"""`-m` sweeps: every job's config is checked before the first starts (a sweeper), a signal stops the
whole sweep, not only its current job, and a summary of every job (its outcome and how it ended) is
written once the sweep ends (a callback)."""

from __future__ import annotations

import signal
from pathlib import Path

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tinyzero.analysis.compare import STATUS_FILE, compare, format_table
from tinyzero.errors import report_config_error
from tinyzero.train.callbacks import StopOnSignal
from tinyzero.train.config_keys import check_unread

IN_PROCESS = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # runs the jobs one after another


class SweepSummary(Callback):
    """Writes how each job ended to `<job>/status.txt` (`finished`, `stopped (SIGTERM)`, `not started`,
    `failed (...)`), and `summary.csv` (with a `status` column) and `comparison.png` into the sweep
    directory after `-m` runs.

    When the jobs run in this process (Hydra's basic launcher), the signals of
    `callbacks.stop_on_signal` are caught for the whole sweep, not only while a job trains: the job
    under way stops with a checkpoint and no later job starts (scripts/train.py), so the same sweep
    launched again with `ckpt_path=last` goes on where it stopped.
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        try:
            check_jobs(config, config_name)
        except Exception as err:
            report_config_error(err)
            # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings
            raise SystemExit(2) from None
        if config.hydra.launcher._target_ != IN_PROCESS:
            return  # each job is a process of its own (SLURM): its `StopOnSignal` is all it needs
        names = OmegaConf.select(config, "callbacks.stop_on_signal.signals", default=None) or []
        self._previous = {signum: signal.signal(signum, StopOnSignal.catch) for signum in StopOnSignal(names).signals}

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if rank_zero_only.rank == 0:
            Path(config.hydra.runtime.output_dir, STATUS_FILE).write_text(f"{job_status(job_return)}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        summarize_sweep(Path(config.hydra.sweep.dir))


def check_jobs(config: DictConfig, config_name: str) -> None:
    """Compose and validate every job of the sweep before the first starts (no sweep folder exists
    yet): a swept key the recipe never reads (`algorithm.kl_coef` under GRPO, whose KL is a loss
    term: every job would compute the same run) or a bad value stops the sweep, naming the key."""
    from tinyzero.train.build import validate

    arguments = [f"{key}={value}" for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*arguments, *config.hydra.overrides.task])
    swept = [o.key_or_group for o in overrides if o.is_sweep_override()]
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            job_cfg = compose(config_name, overrides=job)
            check_unread(job_cfg, swept, how="swept")
            validate(job_cfg, job)


def job_status(job_return: JobReturn) -> str:
    try:
        return str(job_return.return_value)  # scripts/train.py returns how the run ended
    except Exception as err:  # `return_value` raises the job's own exception
        return f"failed ({type(err).__name__})"


def summarize_sweep(sweep_dir: Path) -> None:
    """`summary.csv`: compare.py's row for each job, with its status (one with empty outcomes for a job
    that logged nothing); `comparison.png`: the curves of those that logged. `scripts/compare.py
    SWEEP_DIR` writes the same two files."""
    if not any(any(sweep_dir.glob(f"*/{name}")) for name in (STATUS_FILE, "metrics.csv")):
        return
    rows, png = compare([sweep_dir], sweep_dir)
    print(format_table(rows))
    print(f"sweep summary: {sweep_dir}/summary.csv" + (f", curves: {png}" if png else ""))
