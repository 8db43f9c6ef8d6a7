"""Log-probs of the response tokens and the policy's entropy `[B, R]`, and the critic's values, from a model."""

from __future__ import annotations

import torch

from tinyzero.kernels.backend import fused_lm_head, logprobs_and_entropy
from tinyzero.models.shared_prompt import shared_prompt_logits


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
