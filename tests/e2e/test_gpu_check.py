"""`scripts/gpu_check.py` keeps working without a GPU: every stage at toy sizes on CPU."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it per stage
    return subprocess.run(
        [sys.executable, "scripts/gpu_check.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    result = run("--out", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stdout


@pytest.mark.slow  # over 20 s on 2 cores: in `make test`, not in the quick `-m "not slow"` run
def test_cpu_mode_runs_every_stage_and_prints_the_summary_last(tmp_path):
    result = run("--cpu", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    verdicts = {r["stage"]: r["result"] for r in summary}
    assert verdicts == {"a": "pass", "b": "pass", "c": "pass", "d": "pass", "e": "skipped", "f": "pass"}, verdicts
    kernels = {row["kernel"] for row in summary[0]["rows"]}
    assert kernels == {"logprobs+entropy", "gae", "linear logprobs+entropy"}
    assert [row["variant"] for row in summary[2]["rows"]] == ["triton fused", "torch unfused"]
    assert summary[3]["rows"][0]["kernels"].startswith("torch (kernels.backend=auto")  # the GPU run: triton
    assert summary[5]["rows"][0]["equal_rows"] == "6/6"
    assert [row["impl"] for row in summary[5]["rows"][1:]] == ["hf", "compiled"]
    assert result.stdout.rstrip().endswith((tmp_path / "summary.md").read_text().rstrip())
