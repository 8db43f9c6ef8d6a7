"""A KL multirun of the tiny recipe, then compare.py on its output."""

import csv
import os
import subprocess
import sys

from conftest import QUICK, ROOT


def test_kl_multirun_and_compare(tmp_path, cache_dir, make_cfg):
    from tinyzero.build import build

    build(make_cfg())  # the shared tiny model exists before the sweep starts
    sweep = tmp_path / "sweep"
    overrides = QUICK + [
        "data.max_steps=2",
        "callbacks.rollout.eval_every_n_steps=1",
        "callbacks.checkpoint.save_hf=false",
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir}/data",
        f"hydra.sweep.dir={sweep}",
        "algorithm.kl_coef=0,0.01",
    ]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "-m", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.csv").exists())
    assert [p.name for p in runs] == ["0", "1"]  # one directory per value
    for run in runs:
        assert (run / ".hydra" / "config.yaml").exists() and (run / "checkpoints" / "step_2.ckpt").exists()
    assert (sweep / "summary.csv").exists() and (sweep / "comparison.png").exists()  # the sweep callback

    out = tmp_path / "compare"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "compare.py"), str(sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "algorithm.kl_coef=0 " in result.stdout + " " and "algorithm.kl_coef=0.01" in result.stdout
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["algorithm.kl_coef=0", "algorithm.kl_coef=0.01"]
    assert all(0.0 <= float(r["final_accuracy"]) <= 1.0 and r["steps"] == "2" for r in rows)
    assert (out / "comparison.png").stat().st_size > 0
