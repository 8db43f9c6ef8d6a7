"""What to change when a recipe's memory plan does not fit its GPUs.

Every candidate is planned, not guessed: `plan_for` is a pure function of the config, so the
figure printed beside a change is the plan of the recipe with that change applied, and a setting
the run would ignore (it leaves the plan as it is) is never suggested. A change is a list of
command-line overrides; key=value ones are set on the composed config as Hydra sets them (after
every group is merged), a group choice (`trainer=fsdp`) recomposes the recipe through a
`Composer`: Hydra's composition of the recipe with some group choices appended.

Not offered, though they would lower the plan: `model.dtype=bfloat16` (AdamW's updates at the
recipes' learning rates fall below bfloat16's resolution of the weights) and `algorithm=grpo`
(no critic, but another algorithm).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from omegaconf import DictConfig, OmegaConf

from tinyzero.train.memory import (
    GIB,
    MemoryPlan,
    dtype_bytes,
    model_shape,
    on_gpu,
    plan_for,
    policy_micro_batch,
    ranks,
    responses_per_rank,
    shards_with_fsdp2,
)

Composer = Callable[[tuple[str, ...]], DictConfig]
# a change that the printed figures (one decimal) would not show is not worth a line
SMALLEST_GAIN = 0.1 * GIB
MAX_DEVICES_PER_NODE = 8
MOST_CHANGES = 3  # in a combination


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


@dataclass(frozen=True)
class Suggestion:
    """A change, the plan of the recipe with it (and with the changes before it, in a
    combination), and what it costs."""

    change: Change
    plan: MemoryPlan
    cost: str


def suggestions(
    cfg,
    gpu_bytes: float,
    engine: str,
    compose: Composer | None = None,
    applied: Change = Change(),
    more_devices: bool = True,
) -> list[Suggestion]:
    """For each switch, its mildest option that fits (else the one with the lowest peak), planned
    on its own after `applied`; those that lower the peak, lowest peak first. Without `compose`
    a one-GPU recipe is offered no more GPUs (that needs trainer=fsdp: a recomposition)."""
    current = applied.applied_to(cfg, compose)
    peak = plan_for(current, gpu_bytes, engine).peak
    more_devices = more_devices and (compose is not None or shards_with_fsdp2(current))
    found = []
    for switch in switches(current, engine, gpu_bytes, more_devices):
        tried = [
            Suggestion(option, plan_for(applied.then(option).applied_to(cfg, compose), gpu_bytes, engine), switch.cost)
            for option in switch.options
        ]
        best = next((s for s in tried if s.plan.fits(gpu_bytes)), min(tried, key=lambda s: s.plan.peak))
        if best.plan.peak <= peak - SMALLEST_GAIN:
            found.append(best)
    return sorted(found, key=lambda s: s.plan.peak)


def combination(
    cfg, gpu_bytes: float, engine: str, compose: Composer | None = None, more_devices: bool = True
) -> list[Suggestion]:
    """Greedy: the best single change, then the best one after it, re-planned each time, until the
    plan fits or MOST_CHANGES are made; each step's plan has every change up to it."""
    steps, applied = [], Change()
    while len(steps) < MOST_CHANGES and not (steps and steps[-1].plan.fits(gpu_bytes)):
        options = suggestions(cfg, gpu_bytes, engine, compose, applied, more_devices)
        if not options:
            break
        steps.append(options[0])
        applied = applied.then(options[0].change)
    return steps


def aligned(items: list[Suggestion], gpu_bytes: float, prefix: str, with_cost: bool) -> list[str]:
    width = max(len(" ".join(s.change.overrides)) for s in items)
    return [
        f"{prefix}{' '.join(s.change.overrides):<{width}}  {s.plan.figures(gpu_bytes)}"
        + (f" ({s.cost})" if with_cost else "")
        for s in items
    ]


def combination_lines(steps: list[Suggestion], gpu_bytes: float, heading: str) -> list[str]:
    """`heading`, then how the plan fits (or how close it comes) as the changes are made in turn."""
    if not steps:
        return [f"{heading}: no setting among these lowers the peak"]
    together = Change()
    for step in steps:
        together = together.then(step.change)
    count = f"{len(steps)} change{'s' if len(steps) > 1 else ''}"
    last = steps[-1].plan
    verdict = f"these {count} fit" if last.fits(gpu_bytes) else f"at best {last.peak / GIB:.1f} GiB, after {count}"
    return [
        f"{heading}; made in turn, re-planned after each, {verdict}:",
        *aligned(steps, gpu_bytes, "  + ", with_cost=False),
        f"  together: {' '.join(together.overrides)}",
    ]


def advice(cfg, plan: MemoryPlan, gpu_bytes: float, engine: str, compose: Composer | None = None) -> list[str]:
    """What to change, as lines to print (none when the plan fits): the single changes that lower
    the peak, best first; when none fits, a combination; when only more GPUs fit, the best
    combination on the GPUs the recipe has."""
    if plan.fits(gpu_bytes):
        return []
    single = suggestions(cfg, gpu_bytes, engine, compose)
    if not single:
        return [f"no setting this recipe reads lowers its peak of {plan.peak / GIB:.1f} GiB per GPU"]
    lines = [f"changes that lower the peak ({plan.peak / GIB:.1f} GiB per GPU), each planned on its own, best first:"]
    lines += aligned(single, gpu_bytes, "  ", with_cost=True)
    fitting = [s for s in single if s.plan.fits(gpu_bytes)]
    if not fitting:
        lines += combination_lines(combination(cfg, gpu_bytes, engine, compose), gpu_bytes, "no single change fits")
    elif all(s.change.adds_devices for s in fitting):
        gpus = ranks(cfg)
        steps = combination(cfg, gpu_bytes, engine, compose, more_devices=False)
        lines += combination_lines(steps, gpu_bytes, f"on {gpus} GPU{'s' if gpus > 1 else ''} (no more)")
    return lines


def run_composer() -> Composer | None:
    """Inside `@hydra.main` (scripts/train.py): this run's config composed again with more group
    choices. None for a config from the compose API, whose overrides are not known here."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return None
    hydra_cfg = HydraConfig.get()
    task, name = list(hydra_cfg.overrides.task), hydra_cfg.job.config_name

    @cache
    def composed(groups: tuple[str, ...]) -> DictConfig:
        return compose(config_name=name, overrides=task + list(groups))

    return composed
