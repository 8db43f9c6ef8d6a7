"""The tolerance of every numerical test, derived from the rounding of the computation it checks.

A value computed in a dtype of machine epsilon ε (2⁻²³ for float32, 2⁻⁵² for float64, 2⁻⁷ for
bfloat16, 2⁻¹⁰ for float16) carries, relative to its size, up to ε/2 per elementwise operation it
went through and, for a sum of n terms, about √n·ε/2: the n roundings are independent, of either
sign, and add up like a random walk, whatever order the kernel adds the terms in (BLAS blocking,
SIMD width, the split over threads: all differ between CPUs). The worst case, n·ε/2, assumes every
rounding goes the same way; it is 390 times larger at Qwen2.5's vocabulary (V = 151 936), and no
test could fail it. The roundings of all the sums a result goes through (a matmul's over H, a
softmax's over V, ...) make one longer random walk:

    bound = SAFETY · ε · (ops + √(Σ n over the result's sums))

SAFETY = 4 on ε (8 units of ε/2) covers the spread of the random walk and a term that dominates the
partial sums: the float32 dhidden of `tests/kernels/test_linear_logprobs.py` at V = 151 665 is
1.2·√V·ε off float64 on an AMD EPYC, whose MKL takes its vendor-neutral code path (reproduced on an
Intel Xeon with MKL_CBWR=COMPATIBLE: 5.6e-5), and 0.1·√V·ε with MKL's AVX-512 kernels. A result
compared with another computed in the same dtype (two paths, neither float64) carries both
paths' errors: `sides=2`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

SAFETY = 4


def rounding_bound(dtype: torch.dtype, sums: Iterable[int] = (), ops: int = 1, sides: int = 1) -> float:
    """Relative error of a result computed in `dtype` through `ops` elementwise operations and one
    sum of n terms for each n in `sums`: SAFETY · ε · (ops + √Σn), times `sides`."""
    return sides * SAFETY * torch.finfo(dtype).eps * (ops + math.sqrt(sum(sums)))


def logprob_bounds(dtype: torch.dtype, vocab: int, hidden: int = 0, tokens: int = 0) -> dict[str, float]:
    """Relative errors of log p(label), the entropy and the gradients of `softmax(logits / τ)` over
    `vocab`, computed in float32 (as the kernels and the torch path do) from logits stored in
    `dtype`: the logits given (`hidden=0`: exact inputs), or `hidden @ weightᵀ`, a sum of `hidden`
    products each, whose gradients dhidden (a sum over `vocab`) and dweight (over `tokens`) are
    stored in `dtype` too.

    float32: log p = z/τ − max − log Σ e^(z − max), 5 ops and a sum over V; the entropy multiplies
    p by log p and sums V more (7 ops); dlogits = (g·(onehot − p) − g_H·p·(log p + H)) / τ reuses
    both sums (12 ops). Roundings to a narrower `dtype`: the logits when computed here, dlogits,
    and dhidden / dweight."""
    logits = [hidden] if hidden else []
    computed = 1 if hidden else 0

    def bound(sums: list[int], ops: int, stored: int) -> float:
        narrow = rounding_bound(dtype, ops=stored) if dtype != torch.float32 else 0.0
        return rounding_bound(torch.float32, logits + sums, ops) + narrow

    bounds = {
        "logprobs": bound([vocab], 5, computed),
        "entropy": bound([vocab, vocab], 7, computed),
        "dlogits": bound([vocab, vocab], 12, computed + 1),
    }
    if hidden:
        bounds["dhidden"] = bound([vocab, vocab, vocab], 12, computed + 2)
        bounds["dweight"] = bound([vocab, vocab, tokens], 12, computed + 2)
    return bounds


# Per Qwen2 decoder layer: two RMSNorms (square, mean, rsqrt, scale), the rotary embedding (2
# products and a sum), the softmax (scale, max, subtract, exp, divide), two residual sums and the
# MLP's SiLU and gate product.
OPS_PER_LAYER = 20


def decoder_bound(
    dtype: torch.dtype,
    layers: int,
    hidden: int,
    intermediate: int,
    tokens: int,
    vocab: int,
    backward: bool = False,
    sides: int = 2,
) -> float:
    """Relative error of the logits of a Qwen2 forward in `dtype`, or of a loss through them: per
    layer the sums over `hidden` of the q, k, v and o projections, over `tokens` of the attention's
    scores and values, over `hidden` and `intermediate` of the MLP; then the final norm, the
    lm_head's sum over `hidden` and the softmax's over `vocab`. `backward`: the gradients of the
    parameters, whose backward runs through the same sums again and sums over `tokens`. Two paths
    (neither float64) by default: `sides=2`."""
    per_layer = [hidden] * 4 + [tokens] * 2 + [hidden, intermediate]
    sums = per_layer * layers + [hidden, hidden, vocab]
    ops = OPS_PER_LAYER * layers + 4
    if backward:
        sums, ops = sums * 2 + [tokens], ops * 2
    return rounding_bound(dtype, sums, ops, sides)


def ppo_step_bound(cfg) -> float:
    """Relative error of one PPO / GRPO step's losses, metrics and gradients on the tiny model of
    `cfg` (a composed training config), two float32 paths: `decoder_bound` with the backward,
    for the step's train_batch_size · rollout.n sequences of up to max_prompt_length +
    max_new_tokens tokens each. A metric is a mean of terms no larger than log V (log-probs,
    entropies, whitened advantages, squared value errors): where it cancels to ~0, the bound
    times log V is its absolute floor."""
    shape = cfg.model.pretrain.model
    tokens = (cfg.data.max_prompt_length + cfg.rollout.max_new_tokens) * cfg.data.train_batch_size * cfg.rollout.n
    return decoder_bound(
        torch.float32,
        shape.num_layers,
        shape.hidden_size,
        shape.intermediate_size,
        tokens,
        cfg.model.pretrain.vocab_size,
        backward=True,
    )


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float64 over all elements: an element near 0 does not blow it up."""
    want = want.double()
    return ((got.double() - want).norm() / want.norm().clamp(min=1e-300)).item()


def assert_within(got: torch.Tensor, want: torch.Tensor, bound: float, what: str = "") -> None:
    """‖got − want‖ ≤ bound · ‖want‖, the message naming the measured error and the bound."""
    error = relative_error(got, want)
    assert error <= bound, f"{what}: relative error {error:.3g} > bound {bound:.3g}"
