"""Rollout engines: one protocol, a transformers engine for anywhere, vLLM for GPUs."""

from tinyzero.rollout.base import RolloutEngine, Rollouts, SamplingParams
from tinyzero.rollout.hf import HFEngine
from tinyzero.rollout.select import ENGINE_KINDS, make_engine, resolve_engine

__all__ = ["ENGINE_KINDS", "HFEngine", "RolloutEngine", "Rollouts", "SamplingParams", "make_engine", "resolve_engine"]
