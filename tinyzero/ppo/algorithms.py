"""The PPO / GRPO math as pure tensor functions.

Shapes: `B` sequences, `T` response tokens. Every `[B, T]` tensor is right-padded and
`response_mask` (1 on response tokens, 0 on padding) says which positions are real.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "micro-batch-mean-token-mean")
KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
MAX_LOG_RATIO = 20.0  # |log π/π'| before `exp`, as in veRL: e^20 is finite in fp32 and bf16


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m·x; padded positions are dropped with `where`, so an inf there never becomes 0·inf = NaN."""
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m·x / Σ m over `dim` (all elements when None); 0 where the mask is empty."""
    total = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / total.clamp(min=1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + eps) over the masked elements; μ is added back when `shift_mean` is False.

    `sum_ranks` sums a tensor over the data-parallel ranks (an all-reduce), so μ and σ² (unbiased,
    two passes) are the global batch's; None: this batch's own.
    """
    total = sum_ranks or (lambda t: t)
    count = total(mask.sum())
    mean = total(masked_sum(values, mask)) / count.clamp(min=1)
    var = total(masked_sum((values - mean) ** 2, mask)) / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a `[B, T]` per-token loss to this batch's share of a mini-batch loss.

    `num_tokens` / `num_seqs` count the valid tokens / sequences of the whole mini-batch (every
    micro-batch, every rank: the all-reduced count over the rank count, since data-parallel
    gradients are averaged), so the shares of all micro-batches sum to the mini-batch's loss
    (as veRL's `agg_loss` with `batch_num_tokens`). None: this batch's own counts.

    token-mean: Σ_bt m l / N_tok;  seq-mean-token-sum: Σ_b Σ_t m l / N_seq;
    seq-mean-token-mean: Σ_b (Σ_t m l / Σ_t m) / N_seq;
    micro-batch-mean-token-mean (TinyZero's veRL): (Σ_bt m l / Σ_bt m) · B / N_seq, a token mean
    within each micro-batch, micro-batches weighted by their share of the sequences.
    """
    tokens = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
    seqs = mask.shape[0] if num_seqs is None else num_seqs
    if mode == "token-mean":
        return masked_sum(loss_mat, mask) / tokens
    if mode == "seq-mean-token-sum":
        return masked_sum(loss_mat, mask) / max(seqs, 1)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_mat, mask, dim=-1).sum() / max(seqs, 1)
    if mode == "micro-batch-mean-token-mean":
        return masked_mean(loss_mat, mask) * mask.shape[0] / max(seqs, 1)
    raise ValueError(f"algorithm.loss_agg_mode must be one of {list(LOSS_AGG_MODES)}, got {mode!r}")


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


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL").

    With log r = log π_ref − log π:  k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r
    (`low_var_kl` in veRL; as there, log r is clamped to ±20 before `exp` and k3 to [−10, 10]).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"algorithm.kl_penalty must be one of {sorted(KL_KINDS)}, got {kind!r}")
    log_ratio = ref_logprobs - logprobs
    kind = KL_KINDS[kind]
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.clamp(log_ratio.exp() - 1 - log_ratio, min=-10.0, max=10.0)


def policy_loss(
    old_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric clipping, all `[B, T]`.

    ρ = π/π_old (log ρ clamped to ±20, as in veRL),  L = max(−A ρ, −A clip(ρ, 1 − ε_low, 1 + ε_high));
    with dual-clip (Ye et al. 2020) L = min(L, −A c) where A < 0. Returns (loss, clip fraction,
    approx KL = mean(log π_old − log π)), each this batch's share of the mini-batch's value
    (`num_tokens`, `num_seqs`: see `aggregate_loss`; the fraction and the KL are token means).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    loss_mat = torch.maximum(unclipped, clipped)
    clip_fraction = aggregate_loss((clipped > unclipped).float(), response_mask, "token-mean", num_tokens)
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1:
            raise ValueError(f"algorithm.clip_ratio_c must be > 1, got {clip_ratio_c}")
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_mat, -advantages * clip_ratio_c), loss_mat)
    approx_kl = aggregate_loss(-log_ratio, response_mask, "token-mean", num_tokens)
    loss = aggregate_loss(loss_mat, response_mask, loss_agg_mode, num_tokens, num_seqs)
    return loss, clip_fraction.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range_value: float = 0.5,
    loss_agg_mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, all `[B, T]`:  ½ max((V − R)², (V_old + clip(V − V_old, ±c) − R)²).

    Returns (loss, fraction of tokens where the clipped term is the larger), each this batch's
    share of the mini-batch's value (see `aggregate_loss`)."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss_mat = 0.5 * torch.maximum(unclipped_loss, clipped_loss)
    clip_fraction = aggregate_loss((clipped_loss > unclipped_loss).float(), response_mask, "token-mean", num_tokens)
    loss = aggregate_loss(loss_mat, response_mask, loss_agg_mode, num_tokens, num_seqs)
    return loss, clip_fraction.detach()


def entropy_bonus(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Mean token entropy H = −Σ_v p_v log p_v of the policy, `[B, T]` → scalar (subtracted from the loss)."""
    return aggregate_loss(entropy, response_mask, loss_agg_mode, num_tokens, num_seqs)


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Adaptive β (Ziegler et al. 2019): β ← β (1 + clip(KL/KL_target − 1, ±0.2) · n / horizon)."""

    def __init__(self, kl_coef: float, target_kl: float, horizon: int):
        super().__init__(kl_coef)
        self.target_kl, self.horizon = target_kl, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target_kl - 1, -0.2), 0.2)
        if math.isfinite(error):
            self.value *= 1 + error * n_steps / self.horizon
