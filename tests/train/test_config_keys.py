"""Keys a command or a recipe sets must be keys the run reads (tinyzero/train/config_keys.py)."""

import os
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tinyzero.errors import ConfigError
from tinyzero.train.config_keys import check_command, flat_keys, unread_keys

EXPERIMENTS = Path(ROOT, "conf", "experiment")
RECIPES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def composed(*overrides):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def keys_set_by(recipe: str) -> set[str]:
    """The keys a recipe file and the recipes it builds on set (not its group choices)."""
    node = OmegaConf.load(EXPERIMENTS / f"{recipe}.yaml")
    parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    own = OmegaConf.masked_copy(node, [k for k in node if k not in ("defaults", "hydra")])
    return set(flat_keys(own)).union(*(keys_set_by(parent) for parent in parents))


@pytest.mark.parametrize("recipe", RECIPES)
def test_no_recipe_sets_a_key_it_never_reads(recipe):
    cfg = composed(f"experiment={recipe}")
    unread = unread_keys(cfg)
    assert not {key: unread[key] for key in keys_set_by(recipe) if key in unread}


def test_the_reward_kl_is_refused_under_grpo_and_the_loss_kl_under_ppo():
    grpo, ppo = composed("experiment=countdown_tiny"), composed("experiment=countdown_tiny_ppo")
    with pytest.raises(ConfigError, match=r"algorithm.kl_coef is set .*weighted by algorithm.kl_loss_coef"):
        check_command(grpo, ["algorithm.kl_coef=0.01"])
    with pytest.raises(ConfigError, match=r"algorithm.kl_loss_coef is set .*weighted by algorithm.kl_coef"):
        check_command(ppo, ["algorithm.kl_loss_coef=0.01"])
    with pytest.raises(ConfigError, match="algorithm.critic_lr is set .*no critic"):
        check_command(grpo, ["algorithm.critic_lr=1e-4"])
    check_command(grpo, ["algorithm.kl_loss_coef=0.01", "experiment=countdown_tiny", "~algorithm.kl_coef"])
    check_command(ppo, ["algorithm.kl_coef=0.01", "algorithm=ppo", "rollout.n=2"])
    # turning the KL loss off makes kl_coef the one read
    check_command(composed("experiment=countdown_tiny", "algorithm.use_kl_loss=false"), ["algorithm.kl_coef=0.01"])


def test_an_added_key_is_refused_with_the_closest_one_but_not_in_open_groups():
    cfg = composed("experiment=countdown_tiny", "+algorithm.kl_coeff=0.1", "+trainer.limit_train_batches=2")
    with pytest.raises(ConfigError, match=r"\+algorithm.kl_coeff adds a key that nothing reads; did you mean "):
        check_command(cfg, ["+algorithm.kl_coeff=0.1"])
    check_command(cfg, ["+trainer.limit_train_batches=2"])  # any Trainer keyword: instantiate checks it
