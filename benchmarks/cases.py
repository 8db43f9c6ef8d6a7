"""Inputs and the functions benchmarked; module-level so a spawned process can import them."""

import torch

from tinyzero.algorithms import compute_gae
from tinyzero.logprobs import logprobs_and_entropy_torch

VOCAB = 151_936


def logprob_inputs(n: int, vocab: int = VOCAB, device: str = "cpu"):
    logits = torch.randn(n, vocab, dtype=torch.bfloat16, device=device).requires_grad_(True)
    labels = torch.randint(vocab, (n,), device=device)
    return logits, labels


def eager_logprobs_fwd_bwd(logits, labels):
    logprobs, entropy = logprobs_and_entropy_torch(logits, labels)
    (logprobs.sum() + entropy.sum()).backward()
    logits.grad = None


def gae_inputs(batch: int, steps: int, device: str = "cpu"):
    lengths = torch.randint(1, steps + 1, (batch,), device=device)
    mask = (torch.arange(steps, device=device)[None] < lengths[:, None]).float()
    return torch.randn(batch, steps, device=device), torch.randn(batch, steps, device=device), mask


def loop_gae(rewards, values, mask):
    return compute_gae(rewards, values, mask, 1.0, 0.95)
