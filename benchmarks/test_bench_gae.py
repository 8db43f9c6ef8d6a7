"""GAE: the Triton kernel (one launch) against the per-token Python loop of veRL / TinyZero.

Roofline bytes: read rewards, values and mask, write advantages and returns: 5·B·T·4.
"""

from functools import partial

import pytest
import torch
from cases import gae_inputs, loop_gae
from measure import cpu_peak_extra_mib, cpu_time_ms, cuda_peak_extra_mib, cuda_time_ms

CUDA = torch.cuda.is_available()
SHAPES = [(256, 512), (512, 1024), (1024, 4096)]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device: Triton kernels and GPU timings")
@pytest.mark.parametrize("batch, steps", SHAPES)
@pytest.mark.parametrize("impl", ["loop", "triton"])
def test_cuda_gae(batch, steps, impl, record):
    from tinyzero.kernels.gae import gae

    fn = loop_gae if impl == "loop" else (lambda r, v, m: gae(r, v, m, 1.0, 0.95))
    inputs = gae_inputs(batch, steps, device="cuda")
    ms = cuda_time_ms(lambda: fn(*inputs), warmup=2, reps=5)
    peak = cuda_peak_extra_mib(lambda: fn(*inputs))
    record("gae", impl, f"B={batch} T={steps}", ms, 5 * batch * steps * 4, peak, cuda=True)


@pytest.mark.parametrize("batch, steps", SHAPES)
def test_cpu_loop_gae(batch, steps, record):
    inputs = gae_inputs(batch, steps)
    ms = cpu_time_ms(lambda: loop_gae(*inputs), reps=2)
    peak = cpu_peak_extra_mib(partial(gae_inputs, batch, steps), loop_gae)
    record("gae", "loop", f"B={batch} T={steps}", ms, 5 * batch * steps * 4, peak)
