"""`-m` sweeps: every job's config is checked before the first starts (a sweeper), a signal stops the
whole sweep, not only its current job, a job whose engine is vLLM trains in a fresh process of its own,
and a summary of every job (its outcome and how it ended) is written once the sweep ends (a callback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tinyzero.analysis.compare import STATUS_FILE, compare, format_table
from tinyzero.errors import ConfigError, report_config_error
from tinyzero.rollout.select import resolve_engine
from tinyzero.train.callbacks import StopOnSignal
from tinyzero.train.config_keys import check_unread

IN_PROCESS = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # runs the jobs one after another
# the launchers that give each job a process of its own, one job at a time per GPU (SLURM: its own allocation)
OWN_PROCESS_LAUNCHERS = {
    IN_PROCESS: "hydra/launcher=basic (the default)",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": "hydra/launcher=submitit_slurm",
}
JOB_PROCESSES = ("auto", "fresh", "same")  # sweep_job_process
STATUS_VARIABLE = "TINYZERO_JOB_STATUS_FILE"  # where a job in a fresh process writes how it ended


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
            check_launcher(config.hydra.launcher._target_, job_process(job_cfg))


def job_process(cfg: DictConfig, device: str | None = None) -> str:
    """Where a job of a sweep trains: `fresh` (a process of its own) or `same` (the sweep's). vLLM allows one
    engine per process (its sleep mode's allocator: `CuMem allocator can only be used for one instance per
    process`, vllm/v1/worker/gpu_worker.py, 0.33.0), so `sweep_job_process=auto` gives a job whose engine
    resolves to vLLM on `device` (the trainer's by default) a fresh one."""
    from tinyzero.train.build import device_type

    if cfg.sweep_job_process != "auto":
        return cfg.sweep_job_process
    engine, _ = resolve_engine(cfg.rollout.engine.kind, device or device_type(cfg))
    return "fresh" if engine == "vllm" else "same"


def check_launcher(launcher: str, process: str) -> None:
    """Refuse a launcher that runs jobs side by side or in reused worker processes (joblib, submitit's
    local one) for jobs that need a process each: one GPU holds one vLLM engine at a time."""
    if process == "fresh" and launcher not in OWN_PROCESS_LAUNCHERS:
        raise ConfigError(
            f"hydra.launcher._target_={launcher} may run this sweep's jobs side by side or in reused processes, "
            "and each of them needs a process of its own (its rollout engine is vLLM, or sweep_job_process=fresh): "
            f"use {' or '.join(OWN_PROCESS_LAUNCHERS.values())}"
        )


def run_in_fresh_process(script: str, config_name: str, overrides: list[str], output_dir: str) -> str:
    """Train one job of an in-process sweep as `python <script> <its overrides>` writing to the job's
    folder, and wait for it: the sweep's jobs run one after another, each in a fresh process. A signal
    the sweep catches (SweepSummary's handlers) goes on to the job, which stops with a checkpoint as any
    run does; returns how the job ended, as it wrote it (`tell_sweep`)."""
    with tempfile.TemporaryDirectory() as folder:
        status_file = Path(folder, "status")
        command = [sys.executable, script, f"--config-name={config_name}", *overrides, f"hydra.run.dir={output_dir}"]
        job = subprocess.Popen(command, env={**os.environ, STATUS_VARIABLE: str(status_file)})
        forwarded = None
        try:
            while job.poll() is None:
                if StopOnSignal.caught and forwarded is None:
                    forwarded = StopOnSignal.caught
                    job.send_signal(getattr(signal, forwarded, signal.SIGTERM))
                time.sleep(0.1)
        except BaseException:  # Ctrl-C reached the job too (one process group): it stops, then so does the sweep
            job.wait()
            raise
        return status_file.read_text() if status_file.exists() else f"failed (exit status {job.returncode})"


def tell_sweep(status: str) -> bool:
    """Write how this run ended where the sweep that started it reads it; False when no sweep did."""
    path = os.environ.get(STATUS_VARIABLE)
    if path:
        Path(path).write_text(status)
    return bool(path)


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
