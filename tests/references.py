"""Float64 ground truth for the kernels, for the kernel tests (`tests/kernels/`) and the GPU acceptance's
stage a (`tests/gpu/kernel_checks.py`): references are test code, not part of the package."""

import torch
from tinyzero.kernels.gae import gae_reference


def float64_logprobs(logits, labels, temperature, grad_lp, grad_h):
    """log p(label), entropy `[N]` and d/dlogits `[N, V]` of Σ grad_lp·lp + grad_h·H for `logits`
    `[N, V]`, `labels` `[N]`, all in float64."""
    x = logits.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(x / temperature, dim=-1)
    lp = log_p.gather(-1, labels[:, None]).squeeze(-1)
    h = -(log_p.exp() * log_p.masked_fill(torch.isinf(log_p), 0)).sum(-1)
    ((lp * grad_lp.double()).sum() + (h * grad_h.double()).sum()).backward()
    return lp.detach(), h.detach(), x.grad


def float64_linear_logprobs(hidden, weight, labels, temperature, grad_lp, grad_h):
    """log p(label), entropy `[N]`, d/dhidden `[N, H]` and d/dweight `[V, H]` of Σ grad_lp·lp + grad_h·H
    for `softmax(hidden @ weightᵀ / τ)`, all in float64."""
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    log_p = torch.log_softmax(h @ w.T / temperature, dim=-1)
    lp = log_p.gather(1, labels[:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    ((lp * grad_lp.double()).sum() + (entropy * grad_h.double()).sum()).backward()
    return lp.detach(), entropy.detach(), h.grad, w.grad


def float64_gae(token_rewards, values, response_mask, gamma: float, lam: float):
    """(advantages, returns) `[B, T]` in float64: the loop over t (`gae_reference`) on float64 copies."""
    return gae_reference(token_rewards.double(), values.double(), response_mask.double(), gamma, lam)
