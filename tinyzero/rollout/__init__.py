"""Rollout engines: one protocol; transformers' generate for anywhere, a static-KV-cache engine
with CUDA graphs and vLLM for GPUs."""

from tinyzero.rollout.base import RolloutEngine, Rollouts, SamplingParams
from tinyzero.rollout.compiled import CompiledEngine
from tinyzero.rollout.hf import HFEngine
from tinyzero.rollout.select import ENGINE_KINDS, make_engine, resolve_engine

__all__ = [
    "ENGINE_KINDS",
    "CompiledEngine",
    "HFEngine",
    "RolloutEngine",
    "Rollouts",
    "SamplingParams",
    "make_engine",
    "resolve_engine",
]
