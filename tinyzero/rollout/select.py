"""Which rollout engine a run gets: `rollout.engine.kind=auto` takes vLLM when it can, then the
compiled engine on CUDA, then transformers' `generate`, and says why."""

from __future__ import annotations

import importlib.util
import logging

import torch

from tinyzero.errors import ConfigError
from tinyzero.registry import Registry
from tinyzero.rollout.compiled import CompiledEngine
from tinyzero.rollout.hf import HFEngine

log = logging.getLogger(__name__)

# kind -> resolve(device_type) -> (the engine that runs, why)
ENGINE_KINDS: Registry = Registry("rollout.engine.kind")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@ENGINE_KINDS.register("auto")
def auto_engine(device_type: str) -> tuple[str, str]:
    """vLLM when it imports and the trainer is on CUDA, then the compiled engine on CUDA, else `generate`."""
    if device_type == "cuda":
        if vllm_available():
            return "vllm", "vLLM is installed and the trainer is on CUDA"
        return "compiled", "vLLM is not installed; decoding over a static KV cache with CUDA graphs"
    return "hf", f"the trainer is on {device_type}; generating with transformers"


@ENGINE_KINDS.register("vllm")
def vllm_engine(device_type: str) -> tuple[str, str]:
    if not vllm_available():
        raise ConfigError(
            "rollout.engine.kind=vllm but vLLM is not installed: pip install '.[gpu]', or rollout.engine.kind=auto"
        )
    if device_type != "cuda":
        raise ConfigError(f"rollout.engine.kind=vllm needs CUDA, the trainer is on {device_type}")
    return "vllm", "set in config"


ENGINE_KINDS.register("compiled", lambda device_type: ("compiled", "set in config"))
ENGINE_KINDS.register("hf", lambda device_type: ("hf", "set in config"))


def resolve_engine(kind: str, device_type: str) -> tuple[str, str]:
    """(engine, reason): vLLM needs the package and CUDA; the compiled engine's CUDA graphs pay
    off on CUDA (it runs anywhere, eagerly on CPU); transformers' generate runs anywhere."""
    return ENGINE_KINDS[kind](device_type)


def make_engine(
    kind: str,
    hf: dict,
    vllm: dict,
    compiled: dict,
    *,
    path: str,
    eos_token_id: int,
    pad_token_id: int,
    device: str | torch.device,
    dtype: str,
    attn_implementation: str,
    rank: int,
    world_size: int,
    max_model_len: int,
    seed: int,
):
    """The engine `kind` resolves to, built with its own options (`hf`, `vllm` or `compiled`) and the shared ones."""
    device = torch.device(device)
    kind, reason = resolve_engine(kind, device.type)
    log.info("rollout engine: %s (%s)", kind, reason)
    if kind == "vllm":
        from tinyzero.rollout.vllm import VLLMEngine

        return VLLMEngine(
            path,
            eos_token_id,
            pad_token_id,
            device,
            dtype,
            rank=rank,
            world_size=world_size,
            max_model_len=max_model_len,
            seed=seed,
            **vllm,
        )
    if kind == "compiled":
        return CompiledEngine(
            path,
            eos_token_id,
            pad_token_id,
            device,
            dtype,
            attn_implementation,
            max_model_len=max_model_len,
            **compiled,
        )
    return HFEngine(path, eos_token_id, pad_token_id, device, dtype, attn_implementation, **hf)
