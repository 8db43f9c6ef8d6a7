"""Log-probs of chosen tokens and the policy's entropy, from one function with a backend switch."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
BACKENDS = ("torch", "triton")


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


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, backend: str = "torch"):
    """Dispatch: `backend="triton"` needs CUDA tensors (issue 4's kernels); otherwise the torch reference."""
    if backend not in BACKENDS:
        raise ValueError(f"kernels.backend must be one of {list(BACKENDS)}, got {backend!r}")
    return logprobs_and_entropy_torch(logits, labels, temperature)


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
