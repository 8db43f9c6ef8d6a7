"""The PPO / GRPO losses as pure tensor functions, all `[B, T]` (`B` sequences, `T` response tokens,
right-padded; `response_mask` says which positions are real), each reduced by `aggregate_loss`."""

from __future__ import annotations

import torch

from tinyzero.ppo.masked import masked_mean, masked_sum
from tinyzero.registry import Registry

MAX_LOG_RATIO = 20.0  # |log π/π'| before `exp`, as in veRL: e^20 is finite in fp32 and bf16
# mode -> reducer(loss_mat, mask, tokens, seqs): how `[B, T]` per-token losses become one (`aggregate_loss`)
LOSS_AGG_MODES: Registry = Registry("algorithm.loss_agg_mode")
# kind -> estimator(log r) of the per-token KL, log r = log π_ref − log π (`kl_penalty`)
KL_ESTIMATORS: Registry = Registry("algorithm.kl_penalty")


@LOSS_AGG_MODES.register("token-mean")
def token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, tokens, seqs) -> torch.Tensor:
    """Σ_bt m l / N_tok."""
    return masked_sum(loss_mat, mask) / tokens


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def seq_mean_token_sum(loss_mat: torch.Tensor, mask: torch.Tensor, tokens, seqs) -> torch.Tensor:
    """Σ_b Σ_t m l / N_seq."""
    return masked_sum(loss_mat, mask) / max(seqs, 1)


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, tokens, seqs) -> torch.Tensor:
    """Σ_b (Σ_t m l / Σ_t m) / N_seq."""
    return masked_mean(loss_mat, mask, dim=-1).sum() / max(seqs, 1)


@LOSS_AGG_MODES.register("micro-batch-mean-token-mean")
def micro_batch_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, tokens, seqs) -> torch.Tensor:
    """(Σ_bt m l / Σ_bt m) · B / N_seq (TinyZero's veRL): a token mean within each micro-batch,
    micro-batches weighted by their share of the sequences."""
    return masked_mean(loss_mat, mask) * mask.shape[0] / max(seqs, 1)


@KL_ESTIMATORS.register("k1", aliases=("kl",))
def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """k1 = −log r: unbiased, high variance, negative on some tokens."""
    return -log_ratio


@KL_ESTIMATORS.register("k2", aliases=("mse",))
def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log r)²: biased, low variance, >= 0."""
    return 0.5 * log_ratio**2


@KL_ESTIMATORS.register("k3", aliases=("low_var_kl",))
def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r: unbiased, low variance, >= 0 (`low_var_kl` in veRL; as there, log r is
    clamped to ±20 before `exp` and k3 to [−10, 10])."""
    log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.clamp(log_ratio.exp() - 1 - log_ratio, min=-10.0, max=10.0)


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

    `mode`: a name in `LOSS_AGG_MODES` (token-mean, seq-mean-token-sum, seq-mean-token-mean,
    micro-batch-mean-token-mean), whose reducer says its formula.
    """
    reduce = LOSS_AGG_MODES[mode]
    tokens = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
    seqs = mask.shape[0] if num_seqs is None else num_seqs
    return reduce(loss_mat, mask, tokens, seqs)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL").

    With log r = log π_ref − log π:  k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r;
    `kind`: a name in `KL_ESTIMATORS` (k1 or kl, k2 or mse, k3 or low_var_kl).
    """
    return KL_ESTIMATORS[kind](ref_logprobs - logprobs)


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
    if clip_ratio_c is not None:  # > 1 (the schema's `algorithm.clip_ratio_c`)
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
