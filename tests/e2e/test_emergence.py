"""The emergence recipe as README runs it, a few steps on a quickly pre-trained base: the held-out
behaviours are logged and drawn, the responses written, the samples page made; its control
pre-trains its own base."""

import csv
import json
import os
import subprocess
import sys

from conftest import ROOT

QUICKLY = [
    "model.pretrain.steps=10",
    "model.pretrain.num_texts=300",
    "data.train_size=64",
    "data.test_size=16",
    "data.train_batch_size=4",
    "algorithm.ppo_mini_batch_size=4",
    "rollout.n=2",
    "data.max_steps=2",
    "callbacks.rollout.eval_every_n_steps=1",
    "callbacks.checkpoint.every_n_steps=0",
]


def train(*overrides, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_the_search_recipe_logs_draws_and_writes_its_behaviours(tmp_path):
    run = tmp_path / "run"
    paths = [f"paths.cache_dir={tmp_path}/cache", f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={run}"]
    result = train("experiment=countdown_search_tiny", *QUICKLY, *paths, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    evaluated = [row for row in rows if row.get("val/accuracy")]
    assert [row["step"] for row in evaluated] == ["0", "1", "2"]
    for key in ("attempts", "check_rate", "retry_after_miss_rate", "self_verified_rate", "check_honesty"):
        assert all(row[f"val/behaviour/{key}"] != "" for row in evaluated), key
        assert any(row.get(f"behaviour/{key}") for row in rows), key  # and for each step's rollouts
    assert all(float(row["val/response_length"]) > 0 for row in evaluated)
    for step in (0, 1, 2):
        lines = (run / "heldout" / f"step_{step}.jsonl").read_text().splitlines()
        assert len(lines) == 16 and json.loads(lines[0])["prompt"].startswith("User: Using the numbers")
    assert (run / "behaviour.png").stat().st_size > 0 and (run / "curves.png").exists()
    assert "step 2<br>held-out" in (run / "samples.html").read_text()
    again = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "samples.py"), str(run), "--out", str(tmp_path / "s.html")],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and (tmp_path / "s.html").read_text() == (run / "samples.html").read_text()


def test_the_control_has_its_own_base_and_the_same_task(tmp_path):
    def job(experiment):
        result = train(
            f"experiment={experiment}", f"paths.cache_dir={tmp_path}", "--cfg", "job", "--resolve", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    search, control = job("countdown_search_tiny"), job("countdown_search_tiny_control")
    assert "pretrain_format: search" in search and "pretrain_format: single" in control
    path = [line for line in search.splitlines() if line.startswith("  path:")]
    assert path and path[0] not in control  # a base of its own: neither overwrites the other's cache
    differing = {line for line in control.splitlines()} ^ {line for line in search.splitlines()}
    assert {line.strip().split(":")[0] for line in differing} == {"pretrain_format", "path", "critic_path"}
