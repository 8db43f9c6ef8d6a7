"""The settings that change a recipe's memory plan, each with the values worth trying (`tinyzero.train.memory_advice`
plans every one and offers those that help)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from tinyzero.train.memory import (
    model_shape,
    on_gpu,
    policy_micro_batch,
    responses_per_rank,
    shards_with_fsdp2,
)
from tinyzero.train.memory_estimate import GIB, dtype_bytes

Composer = Callable[[tuple[str, ...]], DictConfig]


# a change that the printed figures (one decimal) would not show is not worth a line
SMALLEST_GAIN = 0.1 * GIB


MAX_DEVICES_PER_NODE = 8


def hydra_value(value) -> str:
    """A value as a command-line override spells it."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


@dataclass(frozen=True)
class Change:
    """Overrides as a user types them: config-group choices, then key=value pairs."""

    groups: tuple[str, ...] = ()
    values: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, key: str, value, groups: tuple[str, ...] = ()) -> Change:
        return cls(groups, ((key, value),))

    def then(self, other: Change) -> Change:
        """This change, then `other`: a key both set keeps `other`'s value."""
        values = dict(self.values) | dict(other.values)
        return Change(tuple(dict.fromkeys(self.groups + other.groups)), tuple(values.items()))

    @property
    def overrides(self) -> list[str]:
        return [*self.groups, *(f"{key}={hydra_value(value)}" for key, value in self.values)]

    @property
    def adds_devices(self) -> bool:
        return "trainer.devices" in dict(self.values)

    def applied_to(self, cfg: DictConfig, compose: Composer | None) -> DictConfig:
        """`cfg` as Hydra composes it with these overrides appended."""
        changed = copy.deepcopy(compose(self.groups) if self.groups else cfg)
        for key, value in self.values:
            OmegaConf.update(changed, key, value, merge=True)
        return changed


@dataclass(frozen=True)
class Switch:
    """A setting to try: its candidate changes, mildest first, and what it costs the run."""

    options: list[Change]
    cost: str


def halvings(value: int, floor: int = 1) -> list[int]:
    """value / 2, value / 4, ... down to `floor`: [4, 2, 1] for 8."""
    values = []
    while value // 2 >= floor:
        value //= 2
        values.append(value)
    return values


def vllm_share_floor(cfg, gpu_bytes: float) -> float:
    """The smallest `gpu_memory_utilization` that holds the engine's weights and the KV cache of all
    the sequences one engine decodes at once: below it vLLM queues sequences and generation slows."""
    shape, vllm, dtype = model_shape(cfg.model), cfg.rollout.engine.vllm, cfg.rollout.dtype
    sequences = min(vllm.max_num_seqs, responses_per_rank(cfg) * vllm.tensor_parallel_size)
    tokens = sequences * (cfg.data.max_prompt_length + cfg.rollout.max_new_tokens)
    weights = shape.params("lm") * dtype_bytes(dtype)
    return (weights + tokens * shape.kv_cache_bytes_per_token(dtype)) / vllm.tensor_parallel_size / gpu_bytes


def engine_switch(cfg, engine: str, gpu_bytes: float) -> Switch:
    engines = cfg.rollout.engine
    if engine == "vllm":
        floor = vllm_share_floor(cfg, gpu_bytes)
        shares = [x / 100 for x in range(round(engines.vllm.gpu_memory_utilization * 100) - 5, 0, -5)]
        return Switch(
            [Change.of("rollout.engine.vllm.gpu_memory_utilization", u) for u in shares if u >= floor],
            "a smaller vLLM share, still room for every sequence at once",
        )
    # the compiled engine allocates all its rows; transformers' generate at most a rank's responses
    rows = (
        engines.compiled.max_batch_size
        if engine == "compiled"
        else min(engines.hf.max_batch_size, responses_per_rank(cfg))
    )
    return Switch(
        [Change.of(f"rollout.engine.{engine}.max_batch_size", n) for n in halvings(rows)],
        "fewer sequences decoded at once: slower generation",
    )


def device_switch(cfg, engine: str) -> Switch:
    """More GPUs on each node: FSDP2 (trainer=fsdp) shards policy, critic and reference over them;
    counts that split the prompts of a step evenly and hold whole vLLM engines."""
    tensor_parallel = cfg.rollout.engine.vllm.tensor_parallel_size if engine == "vllm" else 1
    group = () if shards_with_fsdp2(cfg) else ("trainer=fsdp",)
    return Switch(
        [
            Change.of("trainer.devices", n, group)
            for n in range(cfg.trainer.devices + 1, MAX_DEVICES_PER_NODE + 1)
            if n % tensor_parallel == 0 and cfg.data.train_batch_size % (n * cfg.trainer.num_nodes) == 0
        ],
        "more GPUs: FSDP2 shards the training state",
    )


def switches(cfg, engine: str, gpu_bytes: float, more_devices: bool) -> list[Switch]:
    """The settings this recipe has, with values it does not have yet. The fsdp.offload_* switches are
    tried on every recipe, but a one-GPU recipe (trainer=gpu) builds no device mesh and ignores them
    today (`memory.offloads`; issue 23): its plan does not change, so they are never suggested there."""
    algorithm, seq = cfg.algorithm, cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    micro_batches = "more, smaller micro-batches: slower steps"
    found = [
        Switch(
            [Change.of("algorithm.ppo_micro_batch_size", n) for n in halvings(policy_micro_batch(cfg))], micro_batches
        ),
        Switch(
            [
                Change.of("algorithm.ppo_max_token_len_per_micro_batch", n)
                for n in halvings(algorithm.ppo_max_token_len_per_micro_batch or 0, seq)
            ],
            micro_batches,
        ),
        Switch(
            [
                Change.of("algorithm.log_prob_micro_batch_size", n)
                for n in halvings(min(algorithm.log_prob_micro_batch_size, responses_per_rank(cfg)))
            ],
            "more log-prob passes: slower",
        ),
        Switch(
            [Change.of("rollout.max_new_tokens", cfg.rollout.max_new_tokens // 2)],
            "responses cut at half the length: changes what is learned",
        ),
        Switch(
            [Change.of("data.max_prompt_length", cfg.data.max_prompt_length // 2)],
            "longer prompts are dropped or cut, as data.overlong_prompts says",
        ),
        Switch(
            [] if cfg.model.gradient_checkpointing else [Change.of("model.gradient_checkpointing", True)],
            "activations recomputed in the backward: slower",
        ),
        Switch(
            [] if cfg.kernels.fused_lm_head else [Change.of("kernels.fused_lm_head", True)],
            "no [tokens, vocab] logits held",
        ),
        Switch(
            [] if cfg.fsdp.offload_optimizer else [Change.of("fsdp.offload_optimizer", True)],
            "shards, gradients and AdamW's step on CPU: slower steps, more CPU memory",
        ),
        Switch(
            [] if cfg.fsdp.offload_reference else [Change.of("fsdp.offload_reference", True)],
            "the reference copied in for each forward: slower",
        ),
        engine_switch(cfg, engine, gpu_bytes),
    ]
    # trainer=fsdp is a GPU trainer: from a CPU recipe it would plan another run
    if more_devices and on_gpu(cfg):
        found.append(device_switch(cfg, engine))
    return [switch for switch in found if switch.options]
