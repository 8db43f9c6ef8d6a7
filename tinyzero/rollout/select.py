"""Which rollout engine a run gets: `rollout.engine.kind=auto` takes vLLM when it can, and says why."""

from __future__ import annotations

import importlib.util
import logging

import torch

from tinyzero.rollout.hf import HFEngine

log = logging.getLogger(__name__)

ENGINE_KINDS = ("auto", "vllm", "hf")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(kind: str, device_type: str) -> tuple[str, str]:
    """(engine, reason): vLLM needs the package and CUDA; transformers' generate runs anywhere."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"rollout.engine.kind={kind!r} is not allowed; choose one of {list(ENGINE_KINDS)}")
    if kind == "vllm":
        if not vllm_available():
            raise ValueError(
                "rollout.engine.kind=vllm but vLLM is not installed: pip install '.[gpu]', or rollout.engine.kind=auto"
            )
        if device_type != "cuda":
            raise ValueError(f"rollout.engine.kind=vllm needs CUDA, the trainer is on {device_type}")
        return kind, "set in config"
    if kind == "hf":
        return kind, "set in config"
    if device_type == "cuda" and vllm_available():
        return "vllm", "vLLM is installed and the trainer is on CUDA"
    why = "vLLM is not installed" if not vllm_available() else f"the trainer is on {device_type}"
    return "hf", f"{why}; generating with transformers"


def make_engine(
    kind: str,
    hf: dict,
    vllm: dict,
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
    """The engine `kind` resolves to, built with its own options (`hf` or `vllm`) and the shared ones."""
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
    return HFEngine(path, eos_token_id, pad_token_id, device, dtype, attn_implementation, **hf)
