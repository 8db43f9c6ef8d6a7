"""The typed config (tinyzero/train/schema.py): every key has an entry; a value outside it fails before loading."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from tinyzero.errors import ConfigError
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.ppo.kl_control import KL_CONTROLLERS
from tinyzero.ppo.losses import KL_ESTIMATORS, LOSS_AGG_MODES
from tinyzero.rollout.select import ENGINE_KINDS
from tinyzero.train.build import build, validate
from tinyzero.train.config_keys import flat_keys
from tinyzero.train.schema import SCHEMA

CONF = Path(ROOT, "conf")
RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# every option of every group on the demo's recipe: a key only some option has is covered too
GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONF.iterdir()
    if group.is_dir() and group.name not in ("experiment", "sweep")
    for option in group.glob("*.yaml")
)
COMPOSITIONS = [[f"experiment={recipe}"] for recipe in RECIPES] + [
    ["experiment=countdown_tiny", f"{group}={option}"] for group, option in GROUP_OPTIONS
]


def run_script(name, *overrides, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def configs():
    return {" ".join(overrides): composed(*overrides) for overrides in COMPOSITIONS}


def test_every_key_of_every_recipe_and_group_option_has_an_entry_and_every_entry_a_key(configs):
    seen = set()
    for name, cfg in configs.items():
        keys = set(flat_keys(cfg))
        assert not sorted(keys - set(SCHEMA)), f"{name}: keys without an entry in tinyzero/train/schema.py"
        absent = [
            key
            for key, entry in SCHEMA.items()
            if entry.only is None and key not in keys and not any(k.startswith(f"{key}.") for k in keys)
        ]
        assert not absent, f"{name} lacks keys the schema says every config has (give them `only`)"
        seen |= keys
    assert not set(SCHEMA) - seen, "entries of no key of any recipe or group option"


def test_every_entry_has_a_one_line_meaning_and_its_own_name():
    for key, entry in SCHEMA.items():
        assert entry.name == key and entry.meaning and "\n" not in entry.meaning, key
        assert entry.kind.allowed, key


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_validates(recipe, configs):
    validate(configs[f"experiment={recipe}"])


def test_an_unknown_estimator_fails_before_any_model_loads_listing_the_registered_ones(tmp_path):
    """The must-show of issue 20, point 4, in this process as `scripts/train.py` runs it (compose, then build)."""
    overrides = ["experiment=countdown_tiny", f"paths.cache_dir={tmp_path}/cache", "algorithm.adv_estimator=nope"]
    with pytest.raises(ConfigError) as failure:
        build(composed(*overrides), overrides)
    assert str(failure.value) == "algorithm.adv_estimator='nope' is not allowed; choose one of ['gae', 'grpo']"
    assert not (tmp_path / "cache").exists(), "a model was built before the config was checked"


def test_the_command_prints_the_registered_estimators_in_one_line_and_exits_2(tmp_path):
    result = run_script("train.py", "experiment=countdown_tiny", "algorithm.adv_estimator=nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: algorithm.adv_estimator='nope' is not allowed; choose one of ['gae', 'grpo']"
    )
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm.kl_penalty=k4"], "algorithm.kl_penalty='k4' is not allowed; choose one of ['k1', 'kl', 'k2', "),
        (["algorithm.kl_loss_type=k4"], "algorithm.kl_loss_type='k4' is not allowed; choose one of ['k1', 'kl', "),
        (["algorithm.loss_agg_mode=sum"], "algorithm.loss_agg_mode='sum' is not allowed; choose one of ['token-mean'"),
        (["algorithm.kl_ctrl=pid"], "algorithm.kl_ctrl='pid' is not allowed; choose one of ['fixed', 'adaptive']"),
        (["rollout.engine.kind=sglang"], "rollout.engine.kind='sglang' is not allowed; choose one of ['auto', 'vllm'"),
        (["algorithm.clip_ratio_c=0.5"], "algorithm.clip_ratio_c=0.5 must be null or a number > 1"),
        (["algorithm.gamma=1.5"], "algorithm.gamma=1.5 must be a number in [0, 1]"),
        (
            ["callbacks.checkpoint.keep_last=0"],
            "callbacks.checkpoint.keep_last=0 must be null (keep all) or an integer",
        ),
        (["model.gradient_checkpointing=maybe"], "model.gradient_checkpointing='maybe' is not allowed; choose one of"),
        (
            ["rollout.engine.vllm.sleep_level=3"],
            "rollout.engine.vllm.sleep_level=3 is not allowed; choose one of [1, 2]",
        ),
        (["data.template=[base]"], "data.template=['base'] is not allowed"),
        (["~algorithm.kl_penalty"], "algorithm.kl_penalty=None is not allowed"),  # a key every config has
        (["rollout.temperature=0"], "greedy sampling (rollout.temperature=0) would give rollout.n=8 identical"),
    ],
)
def test_a_value_outside_its_entry_is_refused_naming_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as failure:
        validate(composed("experiment=countdown_tiny", *overrides))
    assert message in str(failure.value)


def test_a_key_of_some_group_options_only_is_checked_where_it_is():
    with pytest.raises(ConfigError, match=r"^task.digits_a=1.5 must be an integer$"):
        validate(composed("experiment=multiplication_tiny", "task.digits_a=1.5"))
    with pytest.raises(ConfigError, match=r"model.architecture.hidden_size=0 must be an integer >= 1"):
        validate(composed("experiment=countdown_tiny", "model=qwen2.5-1.5b", "model.architecture.hidden_size=0"))


def test_the_schemas_choices_are_the_registries_the_code_looks_up():
    for key, registry in [
        ("algorithm.adv_estimator", ADVANTAGE_ESTIMATORS),
        ("algorithm.kl_penalty", KL_ESTIMATORS),
        ("algorithm.kl_loss_type", KL_ESTIMATORS),
        ("algorithm.loss_agg_mode", LOSS_AGG_MODES),
        ("algorithm.kl_ctrl", KL_CONTROLLERS),
        ("rollout.engine.kind", ENGINE_KINDS),
    ]:
        assert SCHEMA[key].kind.choices is registry, key
    assert list(ADVANTAGE_ESTIMATORS) == ["gae", "grpo"]
    assert list(KL_ESTIMATORS) == ["k1", "kl", "k2", "mse", "k3", "low_var_kl"]
    assert list(ENGINE_KINDS) == ["auto", "vllm", "compiled", "hf"]


@pytest.mark.slow  # over 20 s on 2 cores (two eval.py subprocesses): in `make test`, not in the quick run
def test_eval_refuses_a_missing_checkpoint_and_zero_samples_in_one_line(tmp_path):
    for extra, message in [
        ([], "error: checkpoint is required: a Hugging Face model folder or a training checkpoint step_K.ckpt"),
        (["checkpoint=x", "samples=0"], "error: samples=0 must be an integer >= 1"),
        (
            ["checkpoint=x", "sample_temperature=0"],
            "error: greedy sampling (sample_temperature=0) would give samples=4",
        ),
    ]:
        result = run_script("eval.py", "experiment=countdown_tiny", *extra, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
