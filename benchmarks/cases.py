"""Inputs and the functions benchmarked; module-level so a spawned process can import them."""

import torch
from tinyzero.kernels.gae import gae_reference
from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy, linear_logprobs_and_entropy_reference
from tinyzero.kernels.logprobs import logprobs_and_entropy_reference

VOCAB = 151_936


def logprob_inputs(n: int, vocab: int = VOCAB, device: str = "cpu"):
    logits = torch.randn(n, vocab, dtype=torch.bfloat16, device=device).requires_grad_(True)
    labels = torch.randint(vocab, (n,), device=device)
    return logits, labels


def eager_logprobs_fwd_bwd(logits, labels):
    logprobs, entropy = logprobs_and_entropy_reference(logits, labels)
    (logprobs.sum() + entropy.sum()).backward()
    logits.grad = None


def linear_logprob_inputs(n: int, hidden: int, vocab: int = VOCAB, dtype=torch.float32, device: str = "cpu"):
    """hidden states `[n, hidden]` and an lm_head `[vocab, hidden]` (logits of std ≈ 1), labels `[n]`."""
    states = torch.randn(n, hidden, dtype=dtype, device=device).requires_grad_(True)
    weight = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype).requires_grad_(True)
    return states, weight, torch.randint(vocab, (n,), device=device)


def fused_linear_fwd_bwd(hidden, weight, labels, chunk_tokens="auto", backend="torch"):
    logprobs, entropy = linear_logprobs_and_entropy(hidden, weight, labels, chunk_tokens=chunk_tokens, backend=backend)
    (logprobs.sum() + entropy.sum()).backward()
    hidden.grad = weight.grad = None


def unfused_linear_fwd_bwd(hidden, weight, labels, backend="torch"):
    """Today's path: the whole `[N, V]` logits, then the log-prob + entropy of `backend`."""
    if backend == "triton":
        from tinyzero.kernels.logprobs import logprobs_and_entropy

        logprobs, entropy = logprobs_and_entropy(hidden @ weight.T, labels)
    else:
        logprobs, entropy = linear_logprobs_and_entropy_reference(hidden, weight, labels)
    (logprobs.sum() + entropy.sum()).backward()
    hidden.grad = weight.grad = None


def gae_inputs(batch: int, steps: int, device: str = "cpu"):
    lengths = torch.randint(1, steps + 1, (batch,), device=device)
    mask = (torch.arange(steps, device=device)[None] < lengths[:, None]).float()
    return torch.randn(batch, steps, device=device), torch.randn(batch, steps, device=device), mask


def loop_gae(rewards, values, mask):
    return gae_reference(rewards, values, mask, 1.0, 0.95)
