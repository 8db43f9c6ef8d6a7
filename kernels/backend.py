"""The backend switch (`kernels.backend`): each op through its Triton kernel or the torch reference beside it.

The rest of `tinyzero` reaches the kernels through this module only. It imports and runs without triton
(`resolve_backend` then answers `torch`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ._runtime import interpreting, triton_available
from .gae import gae as gae_triton
from .gae import gae_reference
from .linear_logprobs import auto_chunk_tokens, linear_logprobs_and_entropy
from .logprobs import logprobs_and_entropy as logprobs_and_entropy_triton
from .logprobs import logprobs_and_entropy_reference

BACKENDS = ("auto", "torch", "triton")
__all__ = ["BACKENDS", "auto_chunk_tokens", "fused_lm_head", "gae", "logprobs_and_entropy", "resolve_backend"]


def resolve_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """The backend that will run on `device`, and why. `auto`: Triton on CUDA when triton imports,
    else the torch reference; `triton` also runs on CPU under the interpreter (`TRITON_INTERPRET=1`,
    slow: for tests); `torch` always the reference."""
    if requested not in BACKENDS:
        raise ValueError(f"kernels.backend must be one of {list(BACKENDS)}, got {requested!r}")
    if requested == "torch":
        return "torch", "kernels.backend=torch"
    device_type = torch.device(device).type
    if not triton_available():
        return "torch", f"kernels.backend={requested} but triton is not installed: using the torch reference"
    if device_type == "cuda":
        return "triton", f"kernels.backend={requested} on CUDA"
    if requested == "triton" and interpreting():
        return "triton", "kernels.backend=triton under TRITON_INTERPRET=1 (slow: for tests)"
    return "torch", f"kernels.backend={requested} with tensors on {device_type}: using the torch reference"


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, backend: str = "torch"):
    """`logits` `[N, V]`, `labels` `[N]` → (log p(label), H(p)) float32 `[N]`; `backend` as
    resolved by `resolve_backend`."""
    if backend == "triton":
        return logprobs_and_entropy_triton(logits, labels, temperature)
    return logprobs_and_entropy_reference(logits, labels, temperature)


def gae(token_rewards, values, response_mask, gamma: float, lam: float, backend: str = "torch"):
    """(advantages, returns) `[B, T]` from `[B, T]` rewards, values and response mask, through the
    Triton kernel or the loop over t (`gae_reference`), as `backend` says."""
    if backend == "triton":
        return gae_triton(token_rewards, values, response_mask, gamma, lam)
    return gae_reference(token_rewards, values, response_mask, gamma, lam)


@contextmanager
def fused_lm_head(model: torch.nn.Module, labels: torch.Tensor, temperature: float, backend: str, chunk_tokens):
    """Inside the block the model's `lm_head` returns `[B, R, 2]`: log p(label) and entropy for
    `labels` `[B, R]`, from the hidden states of the last R+1 positions (`logits_to_keep=R+1`)
    through `linear_logprobs_and_entropy`: no `[tokens, vocab]` logits.

    The head runs inside the model's own forward, so under FSDP2 it reads `lm_head.weight` after
    the root module's pre-forward all-gather: one gather per micro-batch, whatever the number of
    chunks; tied to `embed_tokens`, the one parameter collects both gradients.
    """
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("kernels.fused_lm_head needs an lm_head without bias")
    batch, response_len = labels.shape

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:  # [B, R+1, H] → [B, R, 2]
        hidden = hidden_states[:, :-1].reshape(batch * response_len, hidden_states.shape[-1])
        device = hidden.device.type
        # the matmul's dtype is autocast's when it is on; the chunks are cast explicitly, so the
        # backward recomputes the logits exactly as the forward made them
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        with torch.autocast(device, enabled=False):
            logprobs, entropy = linear_logprobs_and_entropy(
                hidden.to(dtype), head.weight.to(dtype), labels.reshape(-1), temperature, chunk_tokens, backend
            )
        return torch.stack((logprobs, entropy), dim=-1).view(batch, response_len, 2)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward
