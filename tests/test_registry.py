"""Registries (tinyzero/registry.py): a config key's names, looked up; an unknown name lists the registered ones."""

import os

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from tinyzero.errors import ConfigError
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.ppo.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from tinyzero.ppo.losses import KL_ESTIMATORS, kl_penalty
from tinyzero.registry import Registry


def algorithm_cfg(*overrides):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=countdown_tiny_ppo", *overrides]).algorithm


def test_a_registry_lookup_names_its_key_and_lists_its_names():
    registry = Registry("algorithm.widget")
    registry.register("a", 1)

    @registry.register("b", aliases=("bee",))
    def b():
        return 2

    assert registry["a"] == 1 and registry["bee"] is b and list(registry) == ["a", "b", "bee"]
    assert "c" not in registry and ["a"] not in registry
    with pytest.raises(ConfigError, match=r"^algorithm.widget='c' is not allowed; choose one of \['a', 'b', 'bee'\]$"):
        registry["c"]
    with pytest.raises(ConfigError, match=r"algorithm.widget=\['a'\] is not allowed"):
        registry[["a"]]
    with pytest.raises(ValueError, match="'a' is registered twice"):
        registry.register("a", 3)
    with pytest.raises(ConfigError, match=r"algorithm.adv_estimator='nope' is not allowed; choose one of \['gae'"):
        ADVANTAGE_ESTIMATORS["nope"]


def test_an_alias_is_its_estimator_and_the_controller_comes_from_its_name():
    logp, ref = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    for name, alias in [("k1", "kl"), ("k2", "mse"), ("k3", "low_var_kl")]:
        assert KL_ESTIMATORS[name] is KL_ESTIMATORS[alias]
        assert torch.equal(kl_penalty(logp, ref, name), kl_penalty(logp, ref, alias))
    controller = make_kl_controller(algorithm_cfg("algorithm.kl_ctrl=adaptive"))
    assert isinstance(controller, AdaptiveKLController)
    assert (controller.value, controller.target_kl, controller.horizon) == (0.001, 0.1, 10000)
    fixed = make_kl_controller(algorithm_cfg())
    assert type(fixed) is FixedKLController and fixed.value == 0.001
