"""README's commands, run as README writes them: only step counts and output folders are added."""

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README = Path(ROOT, "README.md").read_text()
GRPO_SWEEP = "python scripts/train.py -m experiment=countdown_tiny algorithm.kl_loss_coef=0,0.001,0.01"
PPO_SWEEP = "python scripts/train.py -m experiment=countdown_tiny_ppo sweep=kl"
COMPARE = "python scripts/compare.py outputs/multirun/<run_name>/<time>"
PRINT_RECIPE = "python scripts/train.py experiment=countdown_3b --cfg job --resolve"


def run_readme(
    command: str, *added: str, cwd: Path, fill: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`command` (a line of README, its `<placeholders>` replaced by `fill`) with `added` overrides."""
    assert command in README, f"README no longer has `{command}`"
    for placeholder, value in (fill or {}).items():
        command = command.replace(placeholder, value)
    _python, script, *words = shlex.split(command)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *words, *added],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def short(cache_dir, tmp_path):
    """Step counts and output folders: a few RL steps, the suite's tiny base model, data under tmp."""

    def overrides(steps: int) -> list[str]:
        return [
            f"data.max_steps={steps}",
            "model.pretrain.steps=10",
            "model.pretrain.num_texts=500",
            "callbacks.checkpoint.every_n_steps=0",
            f"paths.cache_dir={cache_dir}",
            f"paths.data_dir={tmp_path}/data",
        ]

    return overrides


def job_rows(job: Path) -> dict[int, dict]:
    with open(job / "metrics.csv") as f:
        return {int(row["step"]): row for row in csv.DictReader(f)}


def sweep_jobs(cwd: Path, run_name: str) -> list[Path]:
    (sweep,) = (cwd / "outputs" / "multirun" / run_name).iterdir()
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))


@pytest.mark.slow  # three jobs: about 80 s on 2 idle cores
def test_the_grpo_kl_sweep_runs_as_written_and_its_jobs_differ(short, tmp_path):
    result = run_readme(GRPO_SWEEP, *short(3), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sweep_jobs(tmp_path, "countdown_easy_grpo")
    assert [job.name for job in jobs] == ["0", "1", "2"]
    rows = [job_rows(job) for job in jobs]
    assert all(sorted(r) == [0, 1, 2, 3] for r in rows), "one row per step, 0 (held-out only) to 3"
    # step 1 starts at the reference (KL 0); by step 3 the KL weight has changed the policy's drift
    drift = [float(r[3]["actor/kl_loss"]) for r in rows]
    assert len(set(drift)) == 3, drift
    summary = jobs[0].parent / "summary.csv"
    sweep = summary.parent.relative_to(tmp_path)
    compare = run_readme(COMPARE, cwd=tmp_path, fill={"outputs/multirun/<run_name>/<time>": str(sweep)})
    assert compare.returncode == 0, compare.stderr
    for value in ("0", "0.001", "0.01"):
        assert f"algorithm.kl_loss_coef={value}" in compare.stdout
    with open(summary) as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["finished"] * 3


@pytest.mark.slow  # three jobs: about 80 s on 2 idle cores
def test_the_ppo_kl_sweep_runs_as_written(short, tmp_path):
    result = run_readme(PPO_SWEEP, *short(2), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sweep_jobs(tmp_path, "countdown_easy_ppo")
    coefs = [float(job_rows(job)[2]["kl/coef"]) for job in jobs]
    assert coefs == [0.0, 0.001, 0.01]


def test_a_grpo_sweep_of_the_reward_kl_is_refused_before_its_first_job(tmp_path):
    """The mistake README's sweeps once invited: the demo's KL is a loss term, kl_coef is never read."""
    words = ["-m", "experiment=countdown_tiny", "algorithm.kl_coef=0,0.01"]
    train = os.path.join(ROOT, "scripts", "train.py")
    result = subprocess.run([sys.executable, train, *words], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "algorithm.kl_coef is swept but this recipe never reads it" in result.stderr
    assert "algorithm.kl_loss_coef" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_recipe_prints_resolved(tmp_path):
    result = run_readme(PRINT_RECIPE, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run_name: countdown_ppo" in result.stdout and "${" not in result.stdout
    assert not (tmp_path / "outputs").exists()
