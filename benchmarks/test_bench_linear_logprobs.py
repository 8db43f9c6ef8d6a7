"""Chunked lm_head + log-prob + entropy (`tinyzero.kernels.linear_logprobs`) against the unfused
path (the whole `[N, V]` logits, then log-prob + entropy), forward + backward, V = 151 936.

The work is matrix products: 8·N·H·V flops fused (the backward recomputes the logits) against
6·N·H·V unfused. The rows' GB/s count the fewest bytes any implementation must move, the same
for all: read hidden and weight, write their gradients, 2·(N + V)·H·s bytes. Peak memory is
the point: the unfused path holds N·V logits and their copies, the fused one a chunk.
"""

from functools import partial

import pytest
import torch
from cases import VOCAB, fused_linear_fwd_bwd, linear_logprob_inputs, unfused_linear_fwd_bwd
from measure import cpu_fresh_process_run, cpu_peak_extra_mib, cpu_time_ms, cuda_peak_extra_mib, cuda_time_ms

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: Triton kernels and GPU timings")
CUDA_TOKENS = 8 * 1280  # one micro-batch of TinyZero's recipe
# one 1280-token sequence for the timed rows; 8 × 1280 tokens (a few minutes per forward +
# backward on 2 cores) in the memory rows below, where the unfused path outgrows a 24 GiB machine
CPU_TOKENS = 1280
CPU_MICRO_BATCH_TOKENS = 8 * 1280
CPU_LIMIT_MIB = 16 * 1024  # the address space the 8 × 1280 runs may add
CPU_HIDDEN = 896  # Qwen2.5-0.5B


def io_bytes(n: int, hidden: int, itemsize: int) -> int:
    return 2 * (n + VOCAB) * hidden * itemsize


@needs_cuda
@pytest.mark.parametrize("hidden", [1536, 2048])
@pytest.mark.parametrize("impl", ["unfused-eager", "unfused-triton", "fused-torch", "fused-triton"])
def test_cuda_linear_logprobs(hidden, impl, record):
    kind, backend = impl.split("-")
    backend = "torch" if backend == "eager" else backend
    fn = partial(fused_linear_fwd_bwd if kind == "fused" else unfused_linear_fwd_bwd, backend=backend)
    inputs = linear_logprob_inputs(CUDA_TOKENS, hidden, dtype=torch.bfloat16, device="cuda")
    try:
        ms = cuda_time_ms(lambda: fn(*inputs))
        peak = cuda_peak_extra_mib(lambda: fn(*inputs))
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} runs out of GPU memory at H={hidden}")
    shape = f"N={CUDA_TOKENS} H={hidden} V={VOCAB}"
    record("linear+logprobs+entropy fwd+bwd", impl, shape, ms, io_bytes(CUDA_TOKENS, hidden, 2), peak, cuda=True)


# 192-token chunks split the 1280 tokens in 7, as "auto" (1 664 tokens in bf16) splits 8 × 1280
@pytest.mark.parametrize("impl, chunk_tokens", [("unfused", None), ("fused", "auto"), ("fused", 192)])
def test_cpu_linear_logprobs(impl, chunk_tokens, record):
    """The torch paths in float32: time, and peak extra resident memory in a fresh process."""
    make_inputs = partial(linear_logprob_inputs, CPU_TOKENS, CPU_HIDDEN)
    fn = unfused_linear_fwd_bwd if impl == "unfused" else partial(fused_linear_fwd_bwd, chunk_tokens=chunk_tokens)
    inputs = make_inputs()
    ms = cpu_time_ms(lambda: fn(*inputs), reps=1)
    peak = cpu_peak_extra_mib(make_inputs, fn)
    logits_mib = CPU_TOKENS * VOCAB * 4 / 2**20
    if impl == "fused":
        # one float32 [V, H] weight gradient and at most two float32 chunks of logits
        assert peak < (VOCAB * CPU_HIDDEN * 4 + 2 * 768 * VOCAB * 4) / 2**20 + 256
    else:
        assert peak > 2 * logits_mib  # the logits and their float32 softmax, at least
    impl = impl if chunk_tokens is None else f"{impl} chunk={chunk_tokens}"
    shape = f"N={CPU_TOKENS} H={CPU_HIDDEN} V={VOCAB}"
    record("linear+logprobs+entropy fwd+bwd", impl, shape, ms, io_bytes(CPU_TOKENS, CPU_HIDDEN, 4), peak)


@pytest.mark.parametrize("impl", ["unfused", "fused"])
def test_cpu_linear_logprobs_micro_batch(impl, record):
    """One micro-batch of TinyZero's recipe, 8 × 1280 tokens, in float32, each run once in a fresh
    process that may add at most 16 GiB: the unfused path's float32 copies of the logits (6.2 GB
    each) do not fit there, the fused path (auto chunks) must take 5× less than that limit."""
    make_inputs = partial(linear_logprob_inputs, CPU_MICRO_BATCH_TOKENS, CPU_HIDDEN)
    fn = unfused_linear_fwd_bwd if impl == "unfused" else fused_linear_fwd_bwd
    result = cpu_fresh_process_run(make_inputs, fn, limit_mib=CPU_LIMIT_MIB)
    shape = f"N={CPU_MICRO_BATCH_TOKENS} H={CPU_HIDDEN} V={VOCAB}"
    if impl == "unfused":
        assert result is None, f"the unfused path fit in {CPU_LIMIT_MIB} MiB: {result}"
        record("linear+logprobs+entropy fwd+bwd", impl, shape, None, 0, f"> {CPU_LIMIT_MIB} (allocation failed)")
        return
    assert result is not None, f"the fused path needed more than {CPU_LIMIT_MIB} MiB"
    ms, peak = result
    assert 5 * peak < CPU_LIMIT_MIB
    record(
        "linear+logprobs+entropy fwd+bwd",
        f"{impl} chunk=auto",
        shape,
        ms,
        io_bytes(CPU_MICRO_BATCH_TOKENS, CPU_HIDDEN, 4),
        peak,
    )
