"""GAE: the Triton kernel (one launch) against the per-token Python loop of veRL / TinyZero.

Roofline bytes: read rewards, values and mask, write advantages and returns: 5·B·T·4.
"""

from functools import partial

import pytest
import torch
from cases import gae_inputs, loop_gae
from measure import copy_bandwidth_gbs, cpu_peak_extra_mib, cpu_time_ms, cuda_peak_extra_mib, cuda_time_ms

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
    gbs = 5 * batch * steps * 4 / ms / 1e6
    record(
        kernel="gae",
        impl=impl,
        device=torch.cuda.get_device_name(),
        shape=f"B={batch} T={steps}",
        ms=round(ms, 3),
        **{
            "GB/s": round(gbs, 1),
            "roofline %": round(100 * gbs / copy_bandwidth_gbs(), 1),
            "peak extra MiB": round(peak, 1),
        },
    )


@pytest.mark.parametrize("batch, steps", SHAPES)
def test_cpu_loop_gae(batch, steps, record):
    inputs = gae_inputs(batch, steps)
    ms = cpu_time_ms(lambda: loop_gae(*inputs), reps=2)
    peak = cpu_peak_extra_mib(partial(gae_inputs, batch, steps), loop_gae)
    record(
        kernel="gae",
        impl="loop",
        device="cpu",
        shape=f"B={batch} T={steps}",
        ms=round(ms, 1),
        **{"GB/s": round(5 * batch * steps * 4 / ms / 1e6, 2), "peak extra MiB": round(peak, 1)},
    )
