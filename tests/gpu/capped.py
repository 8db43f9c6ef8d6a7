"""`python -m gpu.capped GIB SCRIPT ARGS...`: SCRIPT with PyTorch's allocator capped at GIB of the GPU
(`torch.cuda.set_per_process_memory_fraction`), as if the card were that small: stage g runs the one-GPU
recipes on a large GPU within the memory of the card each is made for. vLLM's own pool is outside the cap
(its share is gpu_memory_utilization of the card it finds); without CUDA the script runs uncapped."""

from __future__ import annotations

import runpy
import sys

import torch

if __name__ == "__main__":
    gib, script, *arguments = sys.argv[1:]
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(gib) * 2**30 / total))
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
