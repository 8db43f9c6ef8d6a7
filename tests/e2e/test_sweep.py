"""Stopping a sweep with a signal, and resuming each job (README's sweeps as written: tests/e2e/test_readme.py)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import QUICK, ROOT


@pytest.mark.slow  # over 20 s on 2 cores: in `make test`, not in the quick `-m "not slow"` run
def test_a_signal_stops_the_sweep_and_each_job_resumes_its_own_checkpoint(tmp_path, cache_dir, make_cfg):
    """SIGTERM during job 0: it saves and stops, job 1 never starts, and the summary says so; the same
    sweep launched again with `ckpt_path=last` resumes job 0 and starts job 1 fresh."""
    from tinyzero.train.build import build

    build(make_cfg())
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "-m",
        *QUICK,
        "callbacks.checkpoint.save_hf=false",
        "callbacks.rollout.dump_rollouts=true",
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir}/data",
        f"hydra.sweep.dir={sweep}",
        "algorithm.kl_coef=0,0.01",
    ]
    process = subprocess.Popen(
        [*command, "data.max_steps=20"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (sweep / "0" / "rollouts" / "step_1_rank_0.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]
    [stopped_at] = [int(p.name[5:-5]) for p in (sweep / "0" / "checkpoints").glob("step_*.ckpt")]
    assert stopped_at < 20 and not (sweep / "1" / "checkpoints").exists()
    want = {"algorithm.kl_coef=0": "stopped (SIGTERM)", "algorithm.kl_coef=0.01": "not started"}
    assert summary_status(sweep) == want

    result = subprocess.run(
        [*command, f"data.max_steps={stopped_at + 1}", "ckpt_path=last"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"resuming from {sweep / '0' / 'checkpoints' / f'step_{stopped_at}.ckpt'}" in output
    assert f"skipping {sweep / '0' / 'checkpoints'}" in output  # job 1 passes over job 0's: another kl_coef
    assert "no checkpoint with this run's settings yet, starting fresh" in output
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / f"step_{stopped_at + 1}.ckpt").exists()
    assert set(summary_status(sweep).values()) == {"finished"}


def summary_status(sweep) -> dict[str, str]:
    with open(sweep / "summary.csv") as f:
        return {row["run"]: row["status"] for row in csv.DictReader(f)}
