"""Training runs for the end-to-end tests: one run in-process, and its metrics read back."""

import csv
import os

import torch

from tinyzero.train.build import build, resume_from

VOLATILE = ("time/", "perf/", "memory/")


def fit(cfg):
    torch.manual_seed(cfg.seed)
    trainer, module, datamodule = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg))
    return trainer, module


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def step_rows(run_dir) -> dict[int, dict[str, float]]:
    """Metrics of each step, without timings: {step: {metric: value}}; step k is the state after k
    updates (row 0 holds the evaluation before training, if any)."""
    rows = {}
    for row in read_metrics(run_dir):
        rows[int(row["step"])] = {
            k: float(v) for k, v in row.items() if v and k != "step" and not k.startswith(VOLATILE)
        }
    return rows
