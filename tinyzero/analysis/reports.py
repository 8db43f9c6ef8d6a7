"""Whole training runs for the report scripts (`scripts/demo_report.py`, `scripts/emergence_report.py`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


TIME = "/usr/bin/time"  # GNU time: `-v` reports the wall clock and the peak resident memory
TIME_WALL = re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)")
TIME_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


@dataclass
class TrainingRun:
    run_dir: Path
    wall: float  # seconds, the whole command (GNU time's wall clock where it is installed)
    pretrain: float  # seconds of pre-training the tiny base (0 when it was cached)
    problems: int  # held-out problems evaluated
    peak_rss_gib: float | None  # GNU time's maximum resident set size; None without it


def run_training(overrides: list[str], run_dir: Path, log: Path) -> TrainingRun:
    """`scripts/train.py` with `overrides` into `run_dir`, under `/usr/bin/time -v` where it exists,
    its output to `log`; raises if it fails."""
    command = [sys.executable, "scripts/train.py", *overrides, f"hydra.run.dir={run_dir}"]
    command.append("callbacks.progress_bar.refresh_rate=0")
    timed = os.access(TIME, os.X_OK)
    start = time.perf_counter()
    result = subprocess.run([TIME, "-v", *command] if timed else command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(overrides)} failed; see {log}")
    pretrain = re.search(r"tiny base model saved to .* \((\d+) s", result.stdout + result.stderr)
    problems = int(re.findall(r"(\d+) problems\)", result.stdout)[-1])
    clock, rss = TIME_WALL.search(result.stderr), TIME_RSS.search(result.stderr)
    if clock:
        hours, minutes, seconds = clock.groups()
        wall = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    return TrainingRun(
        run_dir,
        wall,
        float(pretrain.group(1)) if pretrain else 0.0,
        problems,
        int(rss.group(1)) / 2**20 if rss else None,
    )


def machine() -> str:
    """`N CPU cores (model name), torch X`: the line a report states its numbers on."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
