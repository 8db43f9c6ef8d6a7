"""What the stages share: running `pytest` over the benchmarks (stage b, and stage f's rollout cases)
and `scripts/train.py` (stages c and d), and reading what a run wrote."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import threading
from contextlib import nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from .forked import ROOT, run_python


def run_benchmarks(out: Path, name: str, target: str, selection: str, in_process: bool) -> tuple[list[dict], bool]:
    """`pytest <target> -k <selection>` in `benchmarks/`'s JSON mode: its rows (`<name>.json`, log
    beside it) and whether it passed. On a GPU in a process of its own (memory this one cached would
    count against it); at toy sizes in this one, which has already paid for the imports."""
    results = out / f"{name}.json"
    arguments = ["-q", str(ROOT / target), "-k", selection, "-p", "no:cacheprovider"]
    if in_process:
        log = io.StringIO()
        with patch.dict(os.environ, {"BENCH_OUT": str(results)}), redirect_stdout(log), redirect_stderr(log):
            passed = pytest.main([f"--rootdir={ROOT}", *arguments]) == 0
        text = log.getvalue()
    else:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *arguments],
            cwd=ROOT,
            env={**os.environ, "BENCH_OUT": str(results)},
            capture_output=True,
            text=True,
        )
        passed, text = result.returncode == 0, result.stdout + result.stderr
    (out / f"{name}.log").write_text(text)
    return (json.loads(results.read_text()) if results.exists() else []), passed


def stage_benchmarks(out: Path, small: bool) -> tuple[list[dict], bool]:
    # torch.compile cases take minutes to compile on each shape; the table has their numbers
    # (rollout engines are stage f's)
    selection = "test_cpu_loop_gae and 256" if small else "cuda and not compile and not rollout"
    rows, passed = run_benchmarks(out, "benchmarks", "benchmarks", selection, in_process=small)
    return rows, passed and bool(rows)


class GpuMemorySampler:
    """nvidia-smi's memory.used every 250 ms while a command runs: the peak as the driver sees it."""

    def __init__(self):
        self.peak_mib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak_mib = max(self.peak_mib, float(text.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def last_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """metrics.csv as {step: {metric: value}} (a step's metrics may span several rows)."""
    by_step: dict[str, dict[str, float]] = {}
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                step = row.get("step", "")
                by_step.setdefault(step, {}).update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return by_step


def train(
    out: Path, name: str, overrides: list[str], forked: bool, cap_gib: float | None = None
) -> tuple[int, Path, float]:
    """`scripts/train.py <overrides>` into `out/<name>` (log beside it), in a fork of this process
    (`forked`, on CPU) or a process of its own, its allocator capped at `cap_gib` of the GPU
    (`gpu.capped`): exit status, run folder, nvidia-smi's peak GiB."""
    run_dir = out / name
    arguments = ["scripts/train.py", *overrides, f"hydra.run.dir={run_dir}", "logger=csv"]
    if cap_gib is not None:
        arguments = ["-m", "gpu.capped", str(cap_gib), *arguments]
    with GpuMemorySampler() if torch.cuda.is_available() else nullcontext() as sampler:
        code = run_python(arguments, out / f"{name}.log", forked)
    return code, run_dir, (sampler.peak_mib / 1024 if sampler else math.nan)


def save_partial(out: Path, stage: str, rows: list[dict]) -> None:
    """Rows so far, for the summary of a stage that runs out of time."""
    (out / f"stage_{stage}.partial.json").write_text(json.dumps(rows))
