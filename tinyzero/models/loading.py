"""One loading path for every model: `from_pretrained` on a directory or hub name.

Tiny test models and Qwen2.5-3B go through the same calls; only the path differs.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from tinyzero.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer at {path} has no EOS token: rollouts could never stop")
    if tokenizer.pad_token_id is None:
        log.info("tokenizer at %s has no pad token: padding with EOS %r", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str, dtype: str = "float32", attn_implementation: str = "sdpa") -> torch.nn.Module:
    """A causal LM (policy, reference, or the rollout engine's copy)."""
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation
    )


def load_critic(path: str, dtype: str = "float32", attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The policy's backbone with a scalar value head (`num_labels=1`, as veRL does).

    Loads from a causal-LM checkpoint (the head starts fresh) or from a saved critic.
    No dropout on the head: values must be deterministic for the clipped value loss.
    """
    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh value head is expected, not worth a load report
    try:
        return AutoModelForTokenClassification.from_pretrained(
            path, config=config, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters (names, dtypes, shapes and bytes, in name order), read where they
    are: a whole model, before any sharding. A checkpoint keeps its reference's, to refuse a resume onto
    other reference weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(f"{name} {param.dtype} {tuple(param.shape)}\n".encode())
        digest.update(param.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
