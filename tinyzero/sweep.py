"""A Hydra callback for `-m` sweeps: a signal stops the whole sweep, not only its current job, and a
summary of every job (its outcome and how it ended) is written once the sweep ends."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tinyzero.callbacks import StopOnSignal
from tinyzero.compare import COLUMNS, compare, format_table, run_labels

STATUS_FILE = "status.txt"
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

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
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


def job_status(job_return: JobReturn) -> str:
    try:
        return str(job_return.return_value)  # scripts/train.py returns how the run ended
    except Exception as err:  # `return_value` raises the job's own exception
        return f"failed ({type(err).__name__})"


def read_status(job: Path) -> str:
    path = job / STATUS_FILE
    return path.read_text().strip() if path.exists() else "unknown (killed?)"


def summarize_sweep(sweep_dir: Path) -> None:
    """`summary.csv`: compare.py's row for each job that logged metrics, an empty one for each that did
    not, and every job's status; `comparison.png`: the curves of those that logged."""
    jobs = sorted({p.parent for name in (STATUS_FILE, "metrics.csv") for p in sweep_dir.glob(f"*/{name}")})
    if not jobs:
        return
    logged = [job for job in jobs if (job / "metrics.csv").exists()]
    outcomes = dict(zip(logged, compare(logged, sweep_dir)[0])) if logged else {}
    rows = [
        {**outcomes.get(job, dict.fromkeys(COLUMNS)), "run": label, "status": read_status(job)}
        for job, label in zip(jobs, run_labels(jobs))
    ]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "status"])
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows))
    for row in rows:
        if row["status"] != "finished":
            print(f"{row['run']}: {row['status']}")
    print(f"sweep summary: {sweep_dir}/summary.csv" + (f", curves: {sweep_dir}/comparison.png" if logged else ""))
