"""Masked reductions over right-padded `[B, T]` tensors: `response_mask` is 1 on response tokens, 0 on padding."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
