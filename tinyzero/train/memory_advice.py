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

from dataclasses import dataclass
from functools import cache

from omegaconf import DictConfig

from tinyzero.train.memory import (
    plan_for,
    ranks,
    shards_with_fsdp2,
)
from tinyzero.train.memory_estimate import GIB, MemoryPlan
from tinyzero.train.memory_switches import SMALLEST_GAIN, Change, Composer, switches

MOST_CHANGES = 3  # in a combination


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
