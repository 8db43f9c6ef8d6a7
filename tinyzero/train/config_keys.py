"""Keys a command sets that the run would never read: refused, naming the key that does the job.

Two mistakes pass Hydra silently: a key that exists but that this recipe does not read (a sweep of
`algorithm.kl_coef` under GRPO, whose KL is a loss term, gives identical jobs), and a new key added
with `+` (Hydra's own suggestion for a typo such as `+algorithm.kl_coeff`), which nothing reads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from tinyzero.errors import ConfigError

# groups whose keys are all read by name: an added key is a typo (trainer, logger and callbacks
# take any keyword of the class they build, which instantiate checks; task keys are checked
# against the task's constructor)
OPEN_GROUPS = ("trainer", "logger", "callbacks", "task", "hydra")


def unread_keys(cfg: DictConfig) -> dict[str, str]:
    """{key: why it is not read and what is} for the keys this composed config never reads."""
    algorithm = cfg.algorithm
    unread = {}
    if algorithm.use_kl_loss:
        why = "algorithm.use_kl_loss=true: the KL is a loss term, weighted by algorithm.kl_loss_coef"
        unread |= dict.fromkeys(
            ("algorithm.kl_coef", "algorithm.kl_ctrl", "algorithm.target_kl", "algorithm.kl_horizon"), why
        )
        unread["algorithm.kl_penalty"] = f"{why}, estimated as algorithm.kl_loss_type"
    else:
        why = "algorithm.use_kl_loss=false: the KL is in the reward, weighted by algorithm.kl_coef"
        unread |= {"algorithm.kl_loss_coef": why, "algorithm.kl_loss_type": f"{why}, estimated as algorithm.kl_penalty"}
        if algorithm.kl_ctrl == "fixed":
            why = "algorithm.kl_ctrl=fixed: β stays algorithm.kl_coef (kl_ctrl=adaptive reads it)"
            unread |= dict.fromkeys(("algorithm.target_kl", "algorithm.kl_horizon"), why)
    if algorithm.adv_estimator == "grpo":
        why = (
            "algorithm.adv_estimator=grpo has no critic: group-normalised advantages "
            "(algorithm=ppo has one, e.g. experiment=countdown_tiny_ppo)"
        )
        critic_keys = ("algorithm.critic_lr", "algorithm.clip_range_value", "algorithm.gamma", "algorithm.lam")
        unread |= dict.fromkeys((*critic_keys, "model.critic_path"), why)
    else:
        unread["algorithm.norm_adv_by_std"] = "algorithm.adv_estimator=gae whitens its advantages (grpo reads it)"
    return unread


def check_unread(cfg: DictConfig, keys: Iterable[str], how: str = "set") -> None:
    """Refuse `keys` (the ones a command sets or sweeps) that this config does not read."""
    unread = unread_keys(cfg)
    for key in keys:
        if key in unread:
            raise ConfigError(f"{key} is {how} but this recipe never reads it ({unread[key]})")


def check_added(cfg: DictConfig, keys: Iterable[str]) -> None:
    """Refuse keys added with `+` where every key is read by name, suggesting the closest one."""
    known = [key for key in flat_keys(cfg) if not key.startswith(OPEN_GROUPS)]
    for key in keys:
        if key.split(".")[0] in OPEN_GROUPS:
            continue
        close = difflib.get_close_matches(key, [k for k in known if k != key], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see `python scripts/train.py --cfg job` for the keys"
        raise ConfigError(f"+{key} adds a key that nothing reads; {hint}")


def flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg:
        node = cfg._get_node(key)
        name = f"{prefix}{key}"
        keys += flat_keys(node, f"{name}.") if OmegaConf.is_dict(node) else [name]
    return keys


def parse_overrides(overrides: Iterable[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def check_command(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """A run's command-line overrides (`hydra.overrides.task`): no unread key, no added typo."""
    parsed = [o for o in parse_overrides(overrides) if not o.is_delete() and o.package is None]
    check_added(cfg, [o.key_or_group for o in parsed if o.is_add() and not o.is_force_add()])
    check_unread(cfg, [o.key_or_group for o in parsed])
