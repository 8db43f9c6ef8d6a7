"""Which attention kernel the models load with: `model.attn_implementation=auto` picks the
fastest one that is actually usable here, and says why."""

from __future__ import annotations

import importlib.util

import torch

from tinyzero.errors import ConfigError

ATTENTION_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def sdpa_available() -> bool:
    return hasattr(torch.nn.functional, "scaled_dot_product_attention")


def resolve_attention(choice: str, device_type: str) -> tuple[str, str]:
    """(transformers' `attn_implementation`, the reason) for `choice` on `device_type`.

    auto: flash-attn's FlashAttention-2 on CUDA when it imports, else PyTorch's
    `scaled_dot_product_attention` (its own FlashAttention backend on CUDA), else eager.
    """
    if choice not in ATTENTION_CHOICES:
        allowed = list(ATTENTION_CHOICES)
        raise ConfigError(f"model.attn_implementation={choice!r} is not allowed; choose one of {allowed}")
    if choice == "flash_attention_2":
        if not flash_attn_available():
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 but flash-attn is not installed: "
                "pip install '.[flash]', or use model.attn_implementation=auto"
            )
        if device_type != "cuda":
            raise ConfigError(
                f"model.attn_implementation=flash_attention_2 needs CUDA, the models are on {device_type}"
            )
        return choice, "set in config"
    if choice != "auto":
        return choice, "set in config"
    if device_type == "cuda" and flash_attn_available():
        return "flash_attention_2", "flash-attn is installed and the models are on CUDA"
    missing_flash = "flash-attn is not installed" if not flash_attn_available() else f"the models are on {device_type}"
    if sdpa_available():
        return "sdpa", f"{missing_flash}; using torch scaled_dot_product_attention"
    return "eager", f"{missing_flash} and this torch has no scaled_dot_product_attention"
