"""The rollout engine protocol: what every engine (transformers, vLLM) implements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

PHASES = ("weights", "kv_cache")

# Sampling seeds: rank r at RL step s owns the 2**24 seeds from seed + (s · 2**16 + r) · 2**24, one
# per sample, so no two samples of a run share one (ranks < 2**16; steps < 2**23 keep them in int64)
SEED_BLOCK_BITS, SEED_RANK_BITS = 24, 16
MASK64 = 2**64 - 1


def generator_seed(seed: int) -> int:
    """`seed` hashed (splitmix64's finaliser) into the 32 bits that torch's CPU generator (mt19937)
    keeps: seeded with `seed` itself, every RL step would draw the same samples on the CPU, since
    the steps' seeds differ only above bit 32."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 32


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` responses per prompt; `temperature == 0` is greedy; `seed` seeds the
    run, and a step's rollouts take `replace(sampling, seed=sampling.seed_at(step, rank))`.
    The values a config gives are checked before anything loads (`rollout.*` in tinyzero/train/schema.py)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def seed_at(self, step: int, rank: int) -> int:
        """The first seed of `rank`'s block at RL `step` (see `SEED_BLOCK_BITS`)."""
        return self.seed + (((step << SEED_RANK_BITS) + rank) << SEED_BLOCK_BITS)


@dataclass
class Rollouts:
    """Responses to a list of prompts, `n` per prompt, grouped by prompt.

    `prompt_index[i]` is the prompt that response `i` answers; `response_ids[i]` ends at
    (and includes) the first EOS when the engine stopped there.
    """

    prompt_index: list[int]
    response_ids: list[list[int]]


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates responses on the training devices, sleeping while the policy trains.

    One step's cycle: `wake_up(["weights"])` → `load_weights(policy weights)` →
    `reset_prefix_cache()` → `wake_up(["kv_cache"])` → `generate` → `sleep()`.
    """

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> Rollouts: ...

    def sleep(self) -> None: ...

    def wake_up(self, tags: Sequence[str] | None = None) -> None: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def reset_prefix_cache(self) -> None: ...


def check_tags(tags: Sequence[str] | None) -> tuple[str, ...]:
    tags = PHASES if tags is None else tuple(tags)
    unknown = set(tags) - set(PHASES)
    if unknown:
        raise ValueError(f"wake_up tags must be among {list(PHASES)}, got {sorted(unknown)}")
    return tags
