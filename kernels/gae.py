"""GAE as one kernel launch: a reverse linear recurrence per row, many rows per program.

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t,

with V and A zero past the last valid token (right-padded `response_mask`). veRL and TinyZero
run this as a Python loop over t: one set of kernel launches per response token. Here each
program walks t = T−1 … 0 once over `BLOCK_B` rows, carrying (V_{t+1}, A_{t+1}) in registers.
Bytes moved: 3·B·T·4 read (rewards, values, mask) and 2·B·T·4 written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from tinyzero.kernels._runtime import interpreting

from tinyzero.algorithms import compute_gae as gae_reference  # noqa: F401


@triton.jit
def _gae_kernel(
    rewards_ptr,
    values_ptr,
    mask_ptr,
    advantages_ptr,
    returns_ptr,
    n_rows,
    n_steps,
    stride,
    gamma,
    gamma_lam,
    BLOCK_B: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    in_batch = rows < n_rows
    offsets = rows.to(tl.int64) * stride
    next_value = tl.zeros([BLOCK_B], tl.float32)
    next_advantage = tl.zeros([BLOCK_B], tl.float32)
    for i in range(n_steps):
        t = n_steps - 1 - i
        m = tl.load(mask_ptr + offsets + t, mask=in_batch, other=0).to(tl.float32)
        v = tl.load(values_ptr + offsets + t, mask=in_batch, other=0).to(tl.float32) * m
        r = tl.load(rewards_ptr + offsets + t, mask=in_batch, other=0).to(tl.float32)
        advantage = (r + gamma * next_value - v + gamma_lam * next_advantage) * m
        tl.store(advantages_ptr + offsets + t, advantage, mask=in_batch)
        tl.store(returns_ptr + offsets + t, (advantage + v) * m, mask=in_batch)
        next_value, next_advantage = v, advantage


def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float, out=None
):
    """(advantages, returns), float32 `[B, T]`: the contract of `compute_gae`, in one launch
    (written into `out`, a pair of contiguous float32 tensors, when given)."""
    if not token_rewards.shape == values.shape == response_mask.shape or token_rewards.dim() != 2:
        raise ValueError("token_rewards, values and response_mask must share one [B, T] shape")
    rewards, values, mask = (x.float().contiguous() for x in (token_rewards, values, response_mask))
    n_rows, n_steps = rewards.shape
    advantages, returns = out or (torch.empty_like(rewards), torch.empty_like(rewards))
    block_b = 64 if interpreting() else 32
    _gae_kernel[(triton.cdiv(n_rows, block_b),)](
        rewards, values, mask, advantages, returns, n_rows, n_steps, n_steps, gamma, gamma * lam, BLOCK_B=block_b
    )
    return advantages, returns
