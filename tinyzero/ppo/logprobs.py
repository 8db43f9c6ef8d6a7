"""Log-probs of chosen tokens and the policy's entropy, from one function with a backend switch."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from tinyzero.models.shared_prompt import shared_prompt_logits

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
    from tinyzero.ppo.advantages import compute_gae

    return compute_gae(token_rewards, values, response_mask, gamma, lam)


@contextmanager
def fused_lm_head(model: torch.nn.Module, labels: torch.Tensor, temperature: float, backend: str, chunk_tokens):
    """Inside the block the model's `lm_head` returns `[B, R, 2]`: log p(label) and entropy for
    `labels` `[B, R]`, from the hidden states of the last R+1 positions (`logits_to_keep=R+1`)
    through `linear_logprobs_and_entropy`: no `[tokens, vocab]` logits.

    The head runs inside the model's own forward, so under FSDP2 it reads `lm_head.weight` after
    the root module's pre-forward all-gather: one gather per micro-batch, whatever the number of
    chunks; tied to `embed_tokens`, the one parameter collects both gradients.
    """
    from tinyzero.kernels.linear_logprobs import linear_logprobs_and_entropy

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


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    backend: str = "torch",
    with_entropy: bool = True,
    fused_head: bool = False,
    chunk_tokens: int | str = "auto",
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of the last `response_len` tokens of `input_ids` `[B, P+R]`, each `[B, R]`.

    Position t predicts token t+1, so the response needs the hidden states at [−R−1, −1): the
    model's head runs on the last R+1 positions only (`logits_to_keep`). `fused_head` replaces
    the head's `[B, R+1, V]` logits with the chunked lm_head + log-prob kernel (`fused_lm_head`).
    `share_prompts` runs each distinct prompt once (`shared_prompt_logits`: the same numbers, up
    to rounding, for fewer tokens when rows share prompts).
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    labels = input_ids[:, -response_len:] if response_len else input_ids[:, :0]
    batch = labels.shape[0]
    if share_prompts and fused_head:
        raise ValueError("model.share_prompt_forward does not combine with kernels.fused_lm_head: set one to false")
    if fused_head:
        with fused_lm_head(model, labels, temperature, backend, chunk_tokens):
            out = model(**inputs, logits_to_keep=response_len + 1).logits
        logprobs, entropy = out[..., 0], out[..., 1]
    else:
        if share_prompts and response_len:
            logits = shared_prompt_logits(model, input_ids, attention_mask, position_ids, response_len)
        else:
            logits = model(**inputs, logits_to_keep=response_len + 1).logits[:, :-1]
        logprobs, entropy = logprobs_and_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), temperature, backend
        )
        logprobs, entropy = logprobs.view(batch, response_len), entropy.view(batch, response_len)
    return logprobs, entropy if with_entropy else None


def response_values(critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int):
    """V(s_t) for the state before each response token, `[B, R]` float32."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    values = critic(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    return values[:, -response_len - 1 : -1, 0].float()
