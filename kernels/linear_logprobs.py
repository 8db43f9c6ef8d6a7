"""lm_head + log p(label) + entropy, chunked over tokens: no `[N, V]` logits are ever held.

For each chunk of C tokens the forward computes `logits = hidden[chunk] @ weightᵀ` ([C, V], in
the inputs' dtype), reduces it to per-token (log p(label), entropy, lse) and drops it; the
backward recomputes the chunk's logits, turns that buffer into `dlogits` in place, and adds
`dhidden[chunk] = dlogits @ weight` and `dweight += dlogitsᵀ @ hidden[chunk]` (float32
accumulator, cast to the weight's dtype at the end). One [C, V] buffer, reused by every chunk,
replaces the N·V logits, their float32 copies and their gradient.

Cost, for N tokens, hidden size H, vocabulary V, s bytes per element:
    flops: 2·N·H·V forward, 6·N·H·V backward (recomputed logits, dhidden, dweight): 8·N·H·V in
    all, against 6·N·H·V unfused.
    bytes: the chunk's logits are written and read twice (forward, backward) and the gradient
    written once in place: 5·N·V·s, plus the weight read 4 times and the float32 dweight read
    and written once per chunk: (4·s + 8)·V·H·⌈N/C⌉.
    memory: C·V·s for the chunk (2·C·V·4 on the torch path: logits and probabilities in
    float32), V·H·4 for the dweight accumulator (and V·H·s while it is cast), 3·N·4 for what
    the backward keeps.

With z = logits / τ, lse = log Σ e^z, p = e^{z − lse}:
    log p(y) = z_y − lse,   H = −Σ p log p,
    ∂/∂logits = (g_lp·(onehot(y) − p) − g_h·p·(log p + H)) / τ.

FSDP2 and tied embeddings. `weight` is a plain tensor: the caller passes `lm_head.weight` as
read inside the forward of the FSDP2-wrapped root module (the unit that owns `lm_head`, and
`embed_tokens` when they are tied), after its pre-forward hook has all-gathered the
parameters. This Function saves that one unsharded tensor for its backward and uses it for
every chunk, so the weight is gathered once per micro-batch forward (and once more by the
root's pre-backward hook when `reshard_after_forward=True`, exactly as for a plain
`nn.Linear`), never once per chunk; and the weight gradient leaves the backward as one
[V, H] tensor, so it is reduce-scattered once. Reading `model.lm_head.weight` outside that
forward would hand over the sharded DTensor instead: the caller must not. With tied weights
the same Parameter also feeds `embed_tokens`; autograd adds this Function's `dweight` to the
embedding's gradient like any other use of the parameter.
"""

from __future__ import annotations

import torch

from ._runtime import can_run
from .logprobs import logprobs_and_entropy_reference, logprobs_entropy_backward, logprobs_entropy_forward

BACKENDS = ("torch", "triton")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# 512 MiB of logits per chunk keeps the memory plan's logits line under 1 GiB (the chunk's
# gradient is written into the same buffer), while chunks stay long enough for the GPU: the
# dweight GEMM reads and writes the float32 [V, H] accumulator, 8·V·H bytes for 2·C·V·H
# flops (C/4 flop/byte), and needs C ≳ 1 200 to pass an H100's bf16 ridge of ~300 flop/byte.
# Qwen2.5's V = 151 936 in bf16 gives C = 1 664. Measured on an H200 (N = 10 240, H = 2048,
# bf16, forward + backward, one timer): C = 1 664 50 ms and 2.2 GiB peak, C = 3 328 43 ms and
# 2.7 GiB, unfused (matmul + Triton kernels) 30 ms and 5.8 GiB.
CHUNK_BUDGET_BYTES = 512 * 2**20
TILE = 128  # chunks of whole tensor-core tiles


def auto_chunk_tokens(vocab: int, dtype: torch.dtype, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Tokens per chunk whose `[C, vocab]` logits in `dtype` fit `budget_bytes`, rounded down to a
    multiple of 128 when there are that many; at least 1."""
    tokens = budget_bytes // (vocab * dtype.itemsize)
    return max(1, tokens // TILE * TILE if tokens >= TILE else tokens)


def _torch_forward(logits: torch.Tensor, labels: torch.Tensor, temperature: float):
    """(log p(label), entropy, lse) float32 `[C]` from `logits` `[C, V]`, which it overwrites."""
    z = logits.float().div_(temperature)
    m = z.amax(-1, keepdim=True)
    shifted = z.sub_(m)
    probs = shifted.exp()
    total = probs.sum(-1, keepdim=True)
    log_p = shifted.sub_(total.log())
    logprobs = log_p.gather(1, labels[:, None]).squeeze(1)
    entropy = -probs.div_(total).mul_(log_p).sum(-1)
    return logprobs, entropy, (m + total.log()).squeeze(1)


def _torch_backward(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature):
    """`dlogits` written into `logits` `[C, V]`, the same math as the Triton backward kernel."""
    log_p = logits.float().div_(temperature).sub_(lse[:, None])
    probs = log_p.exp()
    # −p·(g_lp + g_h·(log p + H)), then + g_lp at the label
    grad = log_p.add_(entropy[:, None]).mul_(grad_entropy[:, None]).add_(grad_logprobs[:, None]).mul_(probs).neg_()
    grad.scatter_add_(1, labels[:, None], grad_logprobs[:, None]).div_(temperature)
    return logits.copy_(grad)  # a no-op for float32 logits: grad is that buffer


def _triton_backward(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature):
    """`dlogits` written into `logits` `[C, V]` by the Triton backward kernel."""
    return logprobs_entropy_backward(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature, out=logits)


def _add_product(dweight: torch.Tensor, dlogits: torch.Tensor, h: torch.Tensor) -> None:
    """dweight `[V, H]` float32 += dlogitsᵀ `[V, C]` @ h `[C, H]`."""
    if dlogits.dtype == torch.float32:
        dweight.addmm_(dlogits.T, h)
    elif dweight.is_cuda:
        # cuBLAS adds the bf16 / fp16 product straight into float32: no [V, H] temporary, and
        # 1.55 ms instead of 2.56 per 1 664-token chunk at H = 2048 on an H200
        torch.addmm(dweight, dlogits.T, h, out_dtype=torch.float32, out=dweight)
    else:
        dweight.add_(dlogits.T @ h)  # the chunk's product in the inputs' dtype, summed in float32


_PATHS = {"torch": (_torch_forward, _torch_backward), "triton": (logprobs_entropy_forward, _triton_backward)}


class LinearLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, chunk, backend):
        forward_chunk = _PATHS[backend][0]
        n = hidden.shape[0]
        logprobs, entropy, lse = (torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(3))
        buffer = hidden.new_empty(min(chunk, n), weight.shape[0])
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows]
            logits = torch.mm(h, weight.T, out=buffer[: h.shape[0]])
            logprobs[rows], entropy[rows], lse[rows] = forward_chunk(logits, labels[rows], temperature)
        # per token only (lse, entropy): the logits are recomputed in the backward
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.backend = temperature, chunk, backend
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        backward_chunk = _PATHS[ctx.backend][1]
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        n, chunk = hidden.shape[0], ctx.chunk
        grad_logprobs, grad_entropy = grad_logprobs.float(), grad_entropy.float()
        dhidden = torch.empty_like(hidden) if need_hidden else None
        # float32 accumulator: a bf16 running sum would lose the small chunks' contributions
        dweight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        buffer = hidden.new_empty(min(chunk, n), weight.shape[0])
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows]
            logits = torch.mm(h, weight.T, out=buffer[: h.shape[0]])
            dlogits = backward_chunk(
                logits, labels[rows], lse[rows], entropy[rows], grad_logprobs[rows], grad_entropy[rows], ctx.temperature
            )
            if need_hidden:
                torch.mm(dlogits, weight, out=dhidden[rows])
            if need_weight:
                _add_product(dweight, dlogits, h)
        if need_weight:
            dweight = dweight.to(weight.dtype)
        return dhidden, dweight, None, None, None, None


def _check(hidden, weight, labels, temperature, chunk_tokens, backend) -> int:
    """Raise a ValueError naming the bad argument; return the chunk size in tokens."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"weight must be [V, H] with V ≥ 1 and H = {hidden.shape[1]}, got shape {tuple(weight.shape)}")
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(weight, DTensor):
            raise ValueError("weight is a sharded DTensor: pass lm_head.weight as read inside the FSDP2 root's forward")
    if hidden.dtype not in DTYPES or weight.dtype != hidden.dtype:
        raise ValueError(
            f"hidden and weight must share one dtype (float32, bfloat16 or float16), got {hidden.dtype}, {weight.dtype}"
        )
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 [N] with N = {hidden.shape[0]}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if not (hidden.device == weight.device == labels.device):
        raise ValueError(
            f"hidden, weight, labels on different devices: {hidden.device}, {weight.device}, {labels.device}"
        )
    # one device sync per call: the Triton kernel would read out of bounds without it
    if labels.numel() and ((labels < 0) | (labels >= weight.shape[0])).any():
        raise ValueError(f"labels must lie in [0, V) = [0, {weight.shape[0]})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "triton" and not can_run(hidden):
        raise ValueError(
            "backend='triton' needs triton and CUDA tensors (or TRITON_INTERPRET=1); "
            "choose it with tinyzero.kernels.backend.resolve_backend"
        )
    if chunk_tokens == "auto":
        return auto_chunk_tokens(weight.shape[0], hidden.dtype)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be 'auto' or an int ≥ 1, got {chunk_tokens!r}")
    return chunk_tokens


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int | str = "auto",
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) and entropy of `softmax(hidden @ weightᵀ / τ)`, float32 `[N]` each, differentiable
    w.r.t. `hidden` `[N, H]` and `weight` `[V, H]` (same dtype: float32, bfloat16 or float16);
    `labels` int64 `[N]` in [0, V).

    `chunk_tokens`: tokens per chunk, or "auto" (`auto_chunk_tokens`: 512 MiB of logits).
    `backend`: "torch" (any device, exact float32 math) or "triton" (the fused kernels of
    `tinyzero.kernels.logprobs` on each chunk; CUDA or TRITON_INTERPRET=1), as resolved by
    `tinyzero.kernels.backend.resolve_backend`. Under FSDP2 pass the weight read inside the root
    module's forward (module docstring)."""
    chunk = _check(hidden, weight, labels, temperature, chunk_tokens, backend)
    return LinearLogprobsEntropy.apply(hidden, weight, labels.contiguous(), float(temperature), chunk, backend)


def linear_logprobs_and_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused: the whole `[N, V]` logits, then the eager log-prob + entropy; float32 `[N]` each."""
    return logprobs_and_entropy_reference(hidden @ weight.T, labels, temperature)
