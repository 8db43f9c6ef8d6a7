"""Stand-in stages for `scripts/gpu_check.py --stage-module gpu_sleepy` (tests/e2e/test_gpu_check.py):
one that hangs far past any small budget's share, one that passes, one that cannot run here."""

from __future__ import annotations

import time
from pathlib import Path


def stage_sleeps(out: Path, small: bool) -> tuple[list[dict], bool]:
    time.sleep(600)
    return [{"check": "woke up"}], True


def stage_passes(out: Path, small: bool) -> tuple[list[dict], bool]:
    return [{"check": "ran after the stuck stage"}], True


def stage_cannot_run(out: Path, small: bool) -> tuple[list[dict], None]:
    return [{"skipped": "what it needs is absent"}], None


STAGES = {
    "s": ("sleeps", stage_sleeps),
    "p": ("passes", stage_passes),
    "n": ("cannot run", stage_cannot_run),
}
