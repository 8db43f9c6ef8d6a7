"""The process's global random generators (Python, NumPy, torch, CUDA) as one state: saved in
checkpoints for an exact resume, and kept around code that re-seeds them (vLLM)."""

from __future__ import annotations

import random

import numpy as np
import torch


def global_rng_state() -> dict:
    """Every global generator's state; NumPy's key array as a tensor, so checkpoints load with `weights_only`."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
