"""LoRA (model.lora) on the tiny model: what trains, the reference, the engine's weights, resume and export."""

import re

import peft
import pytest
import torch
from run_helpers import fit, step_rows
from test_reliability import assert_same_metrics
from tolerances import assert_within, decoder_bound, logprob_bounds

from tinyzero.errors import ConfigError
from tinyzero.models import load_critic, load_policy
from tinyzero.models.lora import adapters_disabled, add_lora, base_name, lora_part
from tinyzero.ppo.logprobs import response_logprobs
from tinyzero.train.build import build
from tinyzero.train.callbacks import RLCheckpoint
from tinyzero.train.checkpointing import run_config
from tinyzero.train.export import export_hf
from tinyzero.train.rollout_callback import RolloutCallback

LORA = ["model.lora.rank=4", "model.lora.alpha=8"]


def randomized_adapters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh adapters start with B = 0 (the base model exactly): give B values so they change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def logits_bound(model: torch.nn.Module, tokens: int) -> float:
    """Two float32 forwards of `model`'s shape (merged weights against the adapters, or two exports)."""
    c = model.config
    return decoder_bound(torch.float32, c.num_hidden_layers, c.hidden_size, c.intermediate_size, tokens, c.vocab_size)


def lora_cfg(**settings):
    from omegaconf import OmegaConf

    return OmegaConf.create({"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]} | settings)


def test_a_lora_step_trains_the_adapters_alone_and_the_engine_gets_them_merged(make_cfg):
    cfg = make_cfg("data.max_steps=1", "algorithm.actor_lr=1e-2", "algorithm.critic_lr=1e-2", *LORA)
    trainer, module = fit(cfg)
    assert module.reference is None  # no second copy of the weights: the reference is the base under the adapters
    for model, base in ((module.policy, load_policy(cfg.model.path)), (module.critic, load_critic(cfg.model.path))):
        base_params = dict(base.named_parameters())
        trained = {name for name, param in model.named_parameters() if param.requires_grad}
        assert trained and all(lora_part(name)[1] or ".modules_to_save." in name for name in trained), trained
        for name, param in model.named_parameters():
            if name in trained:
                continue
            if ".original_module." not in name:  # the value head's original is a fresh random head each load
                assert torch.equal(param.detach(), base_params[base_name(name)].detach()), name
        # B starts at 0, so a step that trained the adapters moved every B
        assert all(param.abs().sum() > 0 for name, param in model.named_parameters() if ".lora_B." in name)
    actor, critic = trainer.optimizers
    for optimizer, model in ((actor, module.policy), (critic, module.critic)):
        held = {id(param) for group in optimizer.param_groups for param in group["params"]}
        assert held == {id(param) for param in model.parameters() if param.requires_grad}
    # the engine's copy, pushed merged, computes what the adapted policy computes
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback))
    callback.setup(trainer, module, "fit")
    callback.push_weights(module)
    ids = torch.randint(0, module.policy.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module.policy.eval()(ids).logits
        got = callback.engine.model(ids).logits
    # merging rounds W + s·BA once per weight; the two forwards then sum in different orders
    assert_within(got, want, logits_bound(module.policy, 12), "engine against the adapted policy")
    assert not torch.equal(want, load_policy(cfg.model.path)(ids).logits)  # the adapters did change the logits


def test_the_reference_is_the_base_model_exactly_and_the_fused_head_sees_the_adapters(tiny_dir):
    policy = randomized_adapters(add_lora(load_policy(tiny_dir), lora_cfg(), "policy")).eval()
    base = load_policy(tiny_dir).eval()
    ids = torch.randint(3, base.config.vocab_size, (4, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        with adapters_disabled(policy):
            reference, _ = response_logprobs(policy, ids, mask, 8)
        want, _ = response_logprobs(base, ids, mask, 8)
        adapted, _ = response_logprobs(policy, ids, mask, 8)
        fused, _ = response_logprobs(policy, ids, mask, 8, fused_head=True, chunk_tokens=8)
    assert torch.equal(reference, want)
    assert (adapted - want).abs().max() > 1e-3  # the adapters are on again after the context
    # the fused head: the same log-probs from the adapted hidden states (a different summation order)
    bound = 2 * logprob_bounds(torch.float32, policy.config.vocab_size, policy.config.hidden_size)["logprobs"]
    assert_within(fused, adapted, bound, "fused head against the adapted model's logits")


def test_a_lora_run_resumes_exactly_and_checkpoints_no_base_weights(make_cfg, tmp_path):
    common = ["callbacks.checkpoint.save_hf=false", "callbacks.checkpoint.every_n_steps=1", "algorithm.actor_lr=1e-2"]
    common += LORA
    whole = make_cfg("data.max_steps=3", *common, f"paths.output_dir={tmp_path}/whole")
    fit(whole)
    first = make_cfg("data.max_steps=1", *common, f"paths.output_dir={tmp_path}/first")
    fit(first)
    saved = torch.load(tmp_path / "first/checkpoints/step_1.ckpt", weights_only=False)["state_dict"]
    assert saved and all(lora_part(name)[1] or ".modules_to_save." in name for name in saved), list(saved)[:5]
    resumed = make_cfg(
        "data.max_steps=3",
        *common,
        f"ckpt_path={tmp_path}/first/checkpoints/step_1.ckpt",
        f"paths.output_dir={tmp_path}/resumed",
    )
    fit(resumed)
    assert_same_metrics(step_rows(tmp_path / "resumed"), step_rows(tmp_path / "whole"), [2, 3])


def test_a_lora_export_loads_merged_and_as_a_peft_adapter(make_cfg, tmp_path):
    cfg = make_cfg("data.max_steps=1", "algorithm.actor_lr=1e-2", "algorithm.critic_lr=1e-2", *LORA)
    trainer, module, datamodule = build(cfg)
    next(cb for cb in trainer.callbacks if isinstance(cb, RLCheckpoint)).run_config = run_config(cfg)  # as train.py
    trainer.fit(module, datamodule=datamodule)
    written = export_hf(tmp_path / "run/checkpoints/step_1.ckpt", tmp_path / "hf")
    assert set(written) == {"policy", "critic"}
    ids = torch.randint(0, module.policy.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = module.policy.eval()(ids).logits
        merged = load_policy(str(tmp_path / "hf/policy"))(ids).logits
        adapter = peft.PeftModel.from_pretrained(load_policy(cfg.model.path), str(tmp_path / "hf/policy_adapter"))
        through_peft = adapter.eval()(ids).logits
        values = load_critic(str(tmp_path / "hf/critic"))(ids).logits
        want_values = module.critic.eval()(ids).logits
    bound = logits_bound(module.policy, 10)
    assert_within(merged, want, bound, "merged export")
    assert_within(through_peft, want, bound, "adapter export through peft")
    assert_within(values, want_values, bound, "merged critic export")
    # the run's own export at its last step: the same weights
    with torch.no_grad():
        own = load_policy(str(tmp_path / "run/checkpoints/hf/step_1/policy"))(ids).logits
    assert torch.equal(own, merged)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer=fsdp_cpu", "model.lora.rank=4"], "model.lora.rank > 0 runs on one device"),
        (
            ["model.lora.rank=4", "model.lora.target_modules=[]"],
            "model.lora.target_modules=[] must be a non-empty list",
        ),
        (["fsdp.offload_optimizer=true"], "fsdp.offload_optimizer=true: FSDP2's CPU offload needs a device mesh"),
    ],
)
def test_lora_and_offload_settings_that_cannot_work_are_refused_before_any_model_loads(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build(make_cfg(*overrides))  # validation raises before anything loads
