"""Fused log-prob + entropy (forward + backward) against eager PyTorch and torch.compile.

Roofline bytes for forward + backward on bf16 logits: read N·V·2 (forward), read N·V·2 and
write N·V·2 (backward) = 6·N·V bytes.
"""

from functools import partial

import pytest
import torch
from cases import VOCAB, eager_logprobs_fwd_bwd, logprob_inputs
from measure import cpu_peak_extra_mib, cpu_time_ms, cuda_peak_extra_mib, cuda_time_ms

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: Triton kernels and GPU timings")


def roofline_bytes(n: int, vocab: int) -> int:
    return 6 * n * vocab


@needs_cuda
@pytest.mark.parametrize("n", [4096, 16384, 65536])
@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
def test_cuda_logprobs(n, impl, record):
    from tinyzero.kernels.logprobs import logprobs_and_entropy

    if impl == "eager":
        fn = eager_logprobs_fwd_bwd
    elif impl == "compile":
        fn = torch.compile(eager_logprobs_fwd_bwd)
    else:

        def fn(logits, labels):
            logprobs, entropy = logprobs_and_entropy(logits, labels)
            (logprobs.sum() + entropy.sum()).backward()
            logits.grad = None

    logits, labels = logprob_inputs(n, device="cuda")
    try:
        ms = cuda_time_ms(lambda: fn(logits, labels))
        peak = cuda_peak_extra_mib(lambda: fn(logits, labels))
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} runs out of GPU memory at N={n}")
    record("logprobs+entropy fwd+bwd", impl, f"N={n} V={VOCAB}", ms, roofline_bytes(n, VOCAB), peak, cuda=True)


@pytest.mark.parametrize("n", [256, 1024])
def test_cpu_eager_logprobs(n, record):
    """What a CPU can measure: the torch reference's time and peak memory at the real vocabulary."""
    logits, labels = logprob_inputs(n)
    ms = cpu_time_ms(lambda: eager_logprobs_fwd_bwd(logits, labels), reps=2)
    peak = cpu_peak_extra_mib(partial(logprob_inputs, n), eager_logprobs_fwd_bwd)
    # the eager path allocates float32 [N, V] temporaries: several times the bf16 logits
    assert peak > n * VOCAB * 2 / 2**20
    record("logprobs+entropy fwd+bwd", "eager", f"N={n} V={VOCAB}", ms, roofline_bytes(n, VOCAB), peak)
