"""Rollout engines: one protocol, a transformers engine for anywhere, vLLM for GPUs."""

from tinyzero.rollout.base import RolloutEngine, Rollouts, SamplingParams
from tinyzero.rollout.hf import HFEngine

__all__ = ["HFEngine", "RolloutEngine", "Rollouts", "SamplingParams"]
