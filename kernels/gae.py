"""GAE as one kernel launch: a reverse linear recurrence per row, computed tile by tile.

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t,

with V and A zero past the last valid token (right-padded `response_mask`). veRL and TinyZero
run this as a Python loop over t: one set of kernel launches per response token (`gae_reference`,
the torch path and the tests' ground truth).

Each program owns `BLOCK_B` rows and walks them backwards in `[BLOCK_B, BLOCK_T]` tiles, each
row's `BLOCK_T` elements contiguous (coalesced loads). Masked, the recurrence is affine,
A_t = c_t A_{t+1} + b_t with c_t = γλ m_t and b_t = m_t δ_t, and affine maps compose
associatively, so a tile is one `associative_scan` over its time-reversed elements; the
A_{t+1} entering a tile from its right is carried in registers. Enough programs to fill a GPU:
B / BLOCK_B of them, with BLOCK_B small when T is long.
Bytes moved: 3·B·T·4 read (rewards, values, mask) and 2·B·T·4 written.
"""

from __future__ import annotations

import torch

from ._runtime import interpreting, tl, triton

TILE_ELEMENTS = 1024  # elements per tile on a GPU: 4 KB per input
MAX_BLOCK_T = 1024
NUM_WARPS = 8  # 4 elements per thread and tensor: under 100 registers, no spills (compile_all)


@triton.jit
def _compose(c_later, b_later, c_earlier, b_earlier):
    """(earlier ∘ later)(x) = c_e (c_l x + b_l) + b_e: the scan runs from late to early t."""
    return c_earlier * c_later, c_earlier * b_later + b_earlier


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
    BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offsets = rows.to(tl.int64)[:, None] * stride
    k = tl.arange(0, BLOCK_T)[None, :]  # position in scan order: t = hi − k
    carry = tl.zeros([BLOCK_B], tl.float32)  # A_{t+1} at the tile's right edge
    for tile in range(tl.cdiv(n_steps, BLOCK_T)):
        hi = n_steps - 1 - tile * BLOCK_T
        t = hi - k
        inside = (rows[:, None] < n_rows) & (t >= 0)
        has_next = inside & (t + 1 < n_steps)
        m = tl.load(mask_ptr + offsets + t, mask=inside, other=0).to(tl.float32)
        v = tl.load(values_ptr + offsets + t, mask=inside, other=0).to(tl.float32) * m
        r = tl.load(rewards_ptr + offsets + t, mask=inside, other=0).to(tl.float32)
        m_next = tl.load(mask_ptr + offsets + t + 1, mask=has_next, other=0).to(tl.float32)
        v_next = tl.load(values_ptr + offsets + t + 1, mask=has_next, other=0).to(tl.float32) * m_next
        c = gamma_lam * m
        b = (r + gamma * v_next - v) * m
        c_scan, b_scan = tl.associative_scan((c, b), 1, _compose)
        advantage = c_scan * carry[:, None] + b_scan
        tl.store(advantages_ptr + offsets + t, advantage, mask=inside)
        tl.store(returns_ptr + offsets + t, (advantage + v) * m, mask=inside)
        # the tile's earliest t (k = BLOCK_T − 1) feeds the next tile; a short last tile never carries
        carry = tl.sum(tl.where(k == BLOCK_T - 1, advantage, 0.0), axis=1)


def launch_config(n_rows: int, n_steps: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_T): on a GPU a tile of `TILE_ELEMENTS`, as wide in t as the rows allow (up to
    `MAX_BLOCK_T`); under the interpreter, whose cost is per program, 64 rows per program."""
    block_t = min(triton.next_power_of_2(max(n_steps, 1)), MAX_BLOCK_T)
    if interpreting():
        return 64, min(block_t, 128)
    return max(1, TILE_ELEMENTS // block_t), block_t


def compile_configurations():
    """Every (kernel, signature, constexprs, options) a GPU launch from this file can compile: one
    per power-of-two `BLOCK_T` that `launch_config` can pick."""
    from .compile_all import signature

    block_t = 1
    while block_t <= MAX_BLOCK_T:
        constexprs = {"BLOCK_B": max(1, TILE_ELEMENTS // block_t), "BLOCK_T": block_t}
        sig = signature(_gae_kernel, constexprs, gamma="fp32", gamma_lam="fp32")
        yield _gae_kernel, sig, constexprs, {"num_warps": NUM_WARPS}
        block_t *= 2


def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float, out=None
):
    """(advantages, returns), float32 `[B, T]`: the contract of `gae_reference`, in one launch
    (written into `out`, a pair of contiguous float32 tensors, when given)."""
    if not token_rewards.shape == values.shape == response_mask.shape or token_rewards.dim() != 2:
        raise ValueError("token_rewards, values and response_mask must share one [B, T] shape")
    rewards, values, mask = (x.float().contiguous() for x in (token_rewards, values, response_mask))
    n_rows, n_steps = rewards.shape
    advantages, returns = out or (torch.empty_like(rewards), torch.empty_like(rewards))
    if rewards.numel() == 0:
        return advantages, returns
    block_b, block_t = launch_config(n_rows, n_steps)
    _gae_kernel[(triton.cdiv(n_rows, block_b),)](
        rewards,
        values,
        mask,
        advantages,
        returns,
        n_rows,
        n_steps,
        n_steps,
        gamma,
        gamma * lam,
        BLOCK_B=block_b,
        BLOCK_T=block_t,
        num_warps=NUM_WARPS,
    )
    return advantages, returns


def gae_reference(
    token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) as a loop over t, all tensors `[B, T]`
    (in the values' dtype: float64 for the tests' ground truth).

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
