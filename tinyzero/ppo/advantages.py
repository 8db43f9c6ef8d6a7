"""Advantage estimators, all `[B, T]` (`B` sequences, `T` response tokens, right-padded)."""

from __future__ import annotations

import torch


def compute_gae(
    token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), all tensors `[B, T]`.

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t.
    The value after the last valid token is 0 (the episode ends there), and padded
    positions get advantage and return 0.
    """
    mask = response_mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage_t = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage_t
        next_value, next_advantage = values[:, t], advantage_t
    returns = (advantages + values) * mask
    return advantages, returns


def compute_grpo_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, GRPO), `[B, T]`.

    A_i = (s_i − mean_{g(i)} s) / (std_{g(i)} s + eps) on every valid token of response i,
    where g(i) = `group_index[i]` is the prompt response i answers and std is unbiased.
    A group of one response has no baseline: mean 0 and std 1, as in veRL.
    """
    scores = scores.to(torch.float32)
    _, group = torch.unique(group_index, return_inverse=True)
    num_groups = int(group.max()) + 1 if group.numel() else 0
    count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, group, torch.ones_like(scores)
    )
    total = torch.zeros_like(count).index_add_(0, group, scores)
    mean = total / count
    squares = torch.zeros_like(count).index_add_(0, group, (scores - mean[group]) ** 2)
    std = (squares / (count - 1).clamp(min=1)).sqrt()
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    advantage = scores - mean[group]
    if norm_by_std:
        advantage = advantage / (std[group] + eps)
    return advantage[:, None] * response_mask.to(scores.dtype)
