"""Advantage estimators, all `[B, T]` (`B` sequences, `T` response tokens, right-padded)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyzero.distributed import sum_ranks
from tinyzero.kernels.backend import gae
from tinyzero.ppo.masked import masked_whiten
from tinyzero.registry import Registry


def compute_gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), all tensors `[B, T]`.

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t.
    The value after the last valid token is 0 (the episode ends there), and padded
    positions get advantage and return 0. `backend` (`resolve_backend`'s answer): the Triton
    kernel, or the loop over t beside it (`tinyzero.kernels.gae.gae_reference`).
    """
    return gae(token_rewards, values, response_mask, gamma, lam, backend)


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


def gae_advantages(token_rewards, response_mask, *, values, group_index, algorithm, backend):
    """GAE over the critic's `values` (`algorithm.gamma`, `algorithm.lam`), whitened over the global
    batch; returns (advantages, returns), each `[B, T]`."""
    advantages, returns = compute_gae(token_rewards, values, response_mask, algorithm.gamma, algorithm.lam, backend)
    return masked_whiten(advantages, response_mask, sum_ranks=sum_ranks) * response_mask, returns


def grpo_advantages(token_rewards, response_mask, *, values, group_index, algorithm, backend):
    """GRPO's group-relative advantage of each response's total reward (`algorithm.norm_adv_by_std`);
    returns (advantages `[B, T]`, None: no returns, no critic)."""
    scores = token_rewards.sum(-1)
    return compute_grpo_advantages(scores, group_index, response_mask, norm_by_std=algorithm.norm_adv_by_std), None


@dataclass(frozen=True)
class AdvantageEstimator:
    """`algorithm.adv_estimator`: whether it needs a critic's values, and the function that estimates."""

    needs_critic: bool
    estimate: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("algorithm.adv_estimator")
ADVANTAGE_ESTIMATORS.register("gae", AdvantageEstimator(needs_critic=True, estimate=gae_advantages))  # PPO
ADVANTAGE_ESTIMATORS.register("grpo", AdvantageEstimator(needs_critic=False, estimate=grpo_advantages))
