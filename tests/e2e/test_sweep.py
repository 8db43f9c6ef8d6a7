"""Stopping a sweep with a signal, and resuming each job (README's sweeps as written: tests/e2e/test_readme.py)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import QUICK, ROOT


@pytest.mark.slow  # over 20 s on 2 cores: in `make test`, not in the quick `-m "not slow"` run
@pytest.mark.parametrize("job_process", ["same", "fresh"])
def test_a_signal_stops_the_sweep_and_each_job_resumes_its_own_checkpoint(job_process, tmp_path, cache_dir, make_cfg):
    """SIGTERM during job 0: it saves and stops, job 1 never starts, and the summary says so; the same
    sweep launched again with `ckpt_path=last` resumes job 0 and starts job 1 fresh. With
    `sweep_job_process=fresh` (what a vLLM job gets) each job is a process of the sweep's own, one after
    another, and the signal the sweep gets reaches the job."""
    from tinyzero.train.build import build

    build(make_cfg())
    sweep, processes = tmp_path / "sweep", tmp_path / "processes.jsonl"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests", "process_log"), "PROCESS_LOG": str(processes)}
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "-m",
        *QUICK,
        f"sweep_job_process={job_process}",
        "callbacks.checkpoint.save_hf=false",
        "callbacks.rollout.dump_rollouts=true",
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir}/data",
        f"hydra.sweep.dir={sweep}",
        "algorithm.kl_coef=0,0.01",
    ]
    process = subprocess.Popen(
        [*command, "data.max_steps=20"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
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
    assert job_processes(processes, sweep) == ({"0": 1} if job_process == "fresh" else {})

    result = subprocess.run(
        [*command, f"data.max_steps={stopped_at + 1}", "ckpt_path=last"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"resuming from {sweep / '0' / 'checkpoints' / f'step_{stopped_at}.ckpt'}" in output
    assert f"skipping {sweep / '0' / 'checkpoints'}" in output  # job 1 passes over job 0's: another kl_coef
    assert "no checkpoint with this run's settings yet, starting fresh" in output
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / f"step_{stopped_at + 1}.ckpt").exists()
    assert set(summary_status(sweep).values()) == {"finished"}
    assert job_processes(processes, sweep) == ({"0": 2, "1": 1} if job_process == "fresh" else {})


def job_processes(log, sweep) -> dict[str, int]:
    """{job: how many processes trained it}, from the process log (tests/process_log), after checking that
    each was started by a sweep's own process (`-m`) and that no two of them ran at the same time."""
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    sweeps = {run["pid"] for run in runs if "-m" in run["argv"]}
    jobs = sorted((run for run in runs if f"hydra.run.dir={sweep}/" in " ".join(run["argv"])), key=lambda r: r["start"])
    assert all(job["ppid"] in sweeps for job in jobs)
    assert all(earlier["end"] <= later["start"] for earlier, later in zip(jobs, jobs[1:]))
    folders = [next(a for a in job["argv"] if a.startswith("hydra.run.dir=")) for job in jobs]
    return dict(Counter(folder.rsplit("/", 1)[1] for folder in folders))


def summary_status(sweep) -> dict[str, str]:
    with open(sweep / "summary.csv") as f:
        return {row["run"]: row["status"] for row in csv.DictReader(f)}
