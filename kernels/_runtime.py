"""`triton` for the kernel files, and when its kernels can run: on CUDA tensors, or anywhere under
`TRITON_INTERPRET=1`.

Without triton installed (`make demo` installs none; no wheels off Linux) `triton` and `tl` are a
stand-in: the kernel files still import, so the torch references beside the kernels run, and a
kernel launch raises ImportError.
"""

from __future__ import annotations

import os

import torch


class WithoutTriton:
    """`triton` and `triton.language` when triton does not import: `@triton.jit` and
    `tl.constexpr(...)` at a module's top level pass; anything a launch reaches raises ImportError."""

    def __init__(self, error: ModuleNotFoundError):
        self.error = error

    def jit(self, fn):
        return self

    def constexpr(self, value):
        return value

    def __getattr__(self, name: str):
        if name.startswith("__"):  # probes such as copy's or inspect's find nothing, as on any object
            raise AttributeError(name)
        raise ImportError(f"the Triton kernels need triton ({self.error})")

    def __getitem__(self, grid):
        raise ImportError(f"the Triton kernels need triton ({self.error})")


try:
    import triton
    import triton.language as tl
except ModuleNotFoundError as error:
    if error.name != "triton":
        raise
    triton = tl = WithoutTriton(error)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    return not isinstance(triton, WithoutTriton)


def can_run(tensor: torch.Tensor) -> bool:
    return triton_available() and (tensor.is_cuda or interpreting())
