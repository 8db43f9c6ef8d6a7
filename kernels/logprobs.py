"""Fused log-prob of the chosen token and entropy, forward and backward, over `[N, V]` logits.

Forward reads each row once (online max m, s = Σ e^{z−m} and Σ e^{z−m}(z−m) over vocabulary
blocks) and writes 3 floats per row; backward reads the row once more and writes `dlogits` once. Bytes
moved, the roofline the benchmark divides by: forward N·V·s (s = bytes per logit), backward
2·N·V·s (read logits, write gradient).

With z = logits / τ, lse = log Σ e^z, p = e^{z − lse}:
    log p(y) = z_y − lse,        H = lse − Σ p z,
    ∂ log p(y)/∂z = onehot(y) − p,   ∂H/∂z = −p (log p + H),   and ∂/∂logits = (∂/∂z) / τ.
"""

from __future__ import annotations

import torch

from ._runtime import interpreting, tl, triton

# finite stand-in for −inf: keeps exp(m_old − m_new) defined for all −inf rows. A global read
# inside @triton.jit must be a constexpr: the compiler refuses a plain float (the interpreter does not).
FLOOR = tl.constexpr(-1.0e30)


@triton.jit
def _forward_kernel(
    logits_ptr,
    labels_ptr,
    logprobs_ptr,
    entropy_ptr,
    lse_ptr,
    n_rows,
    vocab,
    row_stride,
    inv_temperature,
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    for r in range(ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + r
        if row < n_rows:
            base = logits_ptr + row.to(tl.int64) * row_stride
            m = tl.full([], FLOOR, tl.float32)
            s = tl.zeros([], tl.float32)
            w = tl.zeros([], tl.float32)  # Σ e^{z − m} (z − m): bounded terms, no cancellation in H
            for start in range(0, vocab, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                z = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32) * inv_temperature
                m_new = tl.maximum(m, tl.max(z, axis=0))
                scale = tl.exp(m - m_new)
                e = tl.exp(z - m_new)
                w = scale * (w + (m - m_new) * s) + tl.sum(e * tl.where(e > 0, z - m_new, 0.0), axis=0)
                s = s * scale + tl.sum(e, axis=0)
                m = m_new
            lse = m + tl.log(s)
            label = tl.load(labels_ptr + row)
            z_label = tl.load(base + label).to(tl.float32) * inv_temperature
            tl.store(logprobs_ptr + row, z_label - lse)
            tl.store(entropy_ptr + row, tl.log(s) - w / s)  # H = lse − E_p[z] = log s − E_p[z − m]
            tl.store(lse_ptr + row, lse)


@triton.jit
def _backward_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    entropy_ptr,
    grad_logprobs_ptr,
    grad_entropy_ptr,
    dlogits_ptr,
    n_rows,
    vocab,
    row_stride,
    grad_row_stride,
    inv_temperature,
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    for r in range(ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + r
        if row < n_rows:
            base = logits_ptr + row.to(tl.int64) * row_stride
            out = dlogits_ptr + row.to(tl.int64) * grad_row_stride
            lse = tl.load(lse_ptr + row)
            entropy = tl.load(entropy_ptr + row)
            g_lp = tl.load(grad_logprobs_ptr + row)
            g_h = tl.load(grad_entropy_ptr + row)
            label = tl.load(labels_ptr + row)
            for start in range(0, vocab, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                in_row = cols < vocab
                z = tl.load(base + cols, mask=in_row, other=float("-inf")).to(tl.float32) * inv_temperature
                log_p = z - lse
                p = tl.exp(log_p)
                onehot = tl.where(cols == label, 1.0, 0.0)
                d_entropy = -p * (tl.where(p > 0, log_p, 0.0) + entropy)
                grad = (g_lp * (onehot - p) + g_h * d_entropy) * inv_temperature
                tl.store(out + cols, grad.to(dlogits_ptr.dtype.element_ty), mask=in_row)


GPU_BLOCK_V = (1024, 4096)  # the only vocabulary blocks a GPU launch uses (compile_all compiles each)


def _launch_config(n_rows: int, vocab: int) -> tuple[int, int]:
    """(ROWS_PER_PROGRAM, BLOCK_V): many rows per program under the interpreter, whose cost is
    per program; one row per program and wide blocks on a GPU (a short vocabulary is masked)."""
    if interpreting():
        return 64, min(triton.next_power_of_2(vocab), 1024)
    return 1, GPU_BLOCK_V[0] if vocab <= GPU_BLOCK_V[0] else GPU_BLOCK_V[1]


def compile_configurations():
    """Every (kernel, signature, constexprs, options) a GPU launch from this file can compile."""
    from .compile_all import signature

    for dtype in ("fp32", "bf16", "fp16"):
        for block_v in GPU_BLOCK_V:
            constexprs = {"ROWS_PER_PROGRAM": 1, "BLOCK_V": block_v}
            forward = signature(
                _forward_kernel, constexprs, logits_ptr=f"*{dtype}", labels_ptr="*i64", inv_temperature="fp32"
            )
            backward = signature(
                _backward_kernel,
                constexprs,
                logits_ptr=f"*{dtype}",
                labels_ptr="*i64",
                dlogits_ptr=f"*{dtype}",
                inv_temperature="fp32",
            )
            yield _forward_kernel, forward, constexprs, {}
            yield _backward_kernel, backward, constexprs, {}


def _check(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, V] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    # any row stride is read in place; only a strided vocabulary axis needs a copy
    return logits if logits.stride(1) == 1 else logits.contiguous()


def logprobs_entropy_forward(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, out=None):
    """(logprobs, entropy, lse), each float32 `[N]`, written into `out` when given."""
    logits = _check(logits, labels)
    n_rows, vocab = logits.shape
    outputs = out or [torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(3)]
    rows, block_v = _launch_config(n_rows, vocab)
    _forward_kernel[(triton.cdiv(n_rows, rows),)](
        logits,
        labels,
        *outputs,
        n_rows,
        vocab,
        logits.stride(0),
        1.0 / temperature,
        ROWS_PER_PROGRAM=rows,
        BLOCK_V=block_v,
    )
    return tuple(outputs)


def logprobs_entropy_backward(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature=1.0, out=None):
    """`dlogits` `[N, V]` in the logits' dtype, written into `out` (which may be `logits` itself)."""
    n_rows, vocab = logits.shape
    out = torch.empty_like(logits) if out is None else out
    rows, block_v = _launch_config(n_rows, vocab)
    _backward_kernel[(triton.cdiv(n_rows, rows),)](
        logits,
        labels,
        lse,
        entropy,
        grad_logprobs.float().contiguous(),
        grad_entropy.float().contiguous(),
        out,
        n_rows,
        vocab,
        logits.stride(0),
        out.stride(0),
        1.0 / temperature,
        ROWS_PER_PROGRAM=rows,
        BLOCK_V=block_v,
    )
    return out


class LogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature=1.0, inplace_backward=False):
        logits = _check(logits, labels)
        logprobs, entropy, lse = logprobs_entropy_forward(logits, labels, temperature)
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.temperature, ctx.inplace_backward = temperature, inplace_backward
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        logits, labels, lse, entropy = ctx.saved_tensors
        if grad_logprobs is None:
            grad_logprobs = torch.zeros_like(lse)
        if grad_entropy is None:
            grad_entropy = torch.zeros_like(lse)
        out = logits if ctx.inplace_backward else None
        dlogits = logprobs_entropy_backward(
            logits, labels, lse, entropy, grad_logprobs, grad_entropy, ctx.temperature, out=out
        )
        return dlogits, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, inplace_backward: bool = False
):
    """Fused Triton log p(label) and entropy, float32 `[N]` each, differentiable w.r.t. `logits`.

    `inplace_backward=True` writes the gradient into the logits buffer (saves N·V memory;
    the logits must not be needed after the backward pass)."""
    return LogprobsEntropy.apply(logits, labels, temperature, inplace_backward)


def logprobs_and_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """Eager torch: `logits` `[N, V]`, `labels` `[N]` → (log p(label), H(p)), float32 `[N]`.

    log p = z_y/τ − logsumexp(z/τ),  H = logsumexp(z/τ) − Σ_v p_v z_v/τ.
    """
    scaled = logits.float() / temperature
    logsumexp = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, labels[:, None]).squeeze(-1) - logsumexp
    probs = torch.softmax(scaled, dim=-1)
    entropy = logsumexp - (probs * scaled.masked_fill(probs == 0, 0)).sum(-1)
    return logprobs, entropy
