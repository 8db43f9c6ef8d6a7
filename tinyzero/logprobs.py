"""Log-probs of chosen tokens and the policy's entropy, from one function with a backend switch."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "triton")


def logprobs_and_entropy_torch(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """Eager reference: `logits` `[N, V]`, `labels` `[N]` → (log p(label), H(p)), float32 `[N]`.

    log p = z_y/τ − logsumexp(z/τ),  H = logsumexp(z/τ) − Σ_v p_v z_v/τ.
    """
    scaled = logits.float() / temperature
    logsumexp = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, labels[:, None]).squeeze(-1) - logsumexp
    probs = torch.softmax(scaled, dim=-1)
    entropy = logsumexp - (probs * scaled.masked_fill(probs == 0, 0)).sum(-1)
    return logprobs, entropy


def resolve_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """The backend that will run on `device`, and why. `auto`: Triton on CUDA when triton imports,
    else the torch reference; `triton` also runs on CPU under the interpreter (`TRITON_INTERPRET=1`,
    slow: for tests); `torch` always the reference."""
    if requested not in BACKENDS:
        raise ValueError(f"kernels.backend must be one of {list(BACKENDS)}, got {requested!r}")
    if requested == "torch":
        return "torch", "kernels.backend=torch"
    from tinyzero.kernels._runtime import interpreting, triton_available

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
        from tinyzero.kernels.logprobs import logprobs_and_entropy as fused

        return fused(logits, labels, temperature)
    return logprobs_and_entropy_torch(logits, labels, temperature)


def gae(token_rewards, values, response_mask, gamma: float, lam: float, backend: str = "torch"):
    """GAE through the Triton kernel or `algorithms.compute_gae`, as `backend` says."""
    if backend == "triton":
        from tinyzero.kernels.gae import gae as fused_gae

        return fused_gae(token_rewards, values, response_mask, gamma, lam)
    from tinyzero.algorithms import compute_gae

    return compute_gae(token_rewards, values, response_mask, gamma, lam)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    backend: str = "torch",
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of the last `response_len` tokens of `input_ids` `[B, P+R]`, each `[B, R]`.

    Logits at position t predict token t+1, so the response's logits are at [−R−1, −1).
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    logits = logits[:, -response_len - 1 : -1]
    labels = input_ids[:, -response_len:]
    batch = labels.shape[0]
    logprobs, entropy = logprobs_and_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), temperature, backend
    )
    return logprobs.view(batch, response_len), entropy.view(batch, response_len) if with_entropy else None


def response_values(critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int):
    """V(s_t) for the state before each response token, `[B, R]` float32."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    values = critic(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    return values[:, -response_len - 1 : -1, 0].float()
