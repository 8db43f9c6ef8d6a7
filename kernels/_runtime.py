"""When the Triton kernels can run: on CUDA tensors, or anywhere under `TRITON_INTERPRET=1`."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def can_run(tensor: torch.Tensor) -> bool:
    return triton_available() and (tensor.is_cuda or interpreting())
