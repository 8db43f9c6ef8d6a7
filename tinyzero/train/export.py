"""A training checkpoint's models as Hugging Face folders (`from_pretrained` loads them): the policy and,
with PPO, the critic. Works on both kinds of `step_K.ckpt`: one file (a single process, or FSDP2 with
`save_distributed_checkpoint: false`) and a sharded folder (`trainer=fsdp`), read in one process without
the ranks that wrote it (`python scripts/export_hf.py CHECKPOINT --out DIR`)."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyzero.distributed import full_state_dict
from tinyzero.errors import ConfigError
from tinyzero.models.loading import load_critic, load_policy, load_tokenizer
from tinyzero.models.lora import add_lora, frozen_names, has_adapters, lora_enabled, merged_weights, save_adapter
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.train.checkpointing import saved_config, verify_checkpoint

ROLES = ("policy", "critic")
LOADERS = {"policy": load_policy, "critic": load_critic}


def base_path(model_cfg, role: str) -> str:
    """Where `role`'s initial weights come from: `model.path` or `model.critic_path`."""
    return model_cfg["path"] if role == "policy" else model_cfg["critic_path"]


def save_hf(model: torch.nn.Module, role: str, model_cfg, out: Path, keep: bool = True) -> list[Path]:
    """`out/<role>`, a Hugging Face folder of `model`'s weights; with LoRA the adapters merged in (the base
    loaded from `model.path` / `model.critic_path` and filled with the merged weights) and the adapters
    alone in `out/<role>_adapter` (peft's format: `PeftModel.from_pretrained(base, folder)`). Every rank
    takes part in the gathers; only one that `keep`s writes. Returns the folders written."""
    if not has_adapters(model):
        state = full_state_dict(model, keep=keep)
        if keep:
            model.save_pretrained(out / role, state_dict=state)
        return [out / role] if keep else []
    merged = {name: tensor.cpu() for name, tensor in merged_weights(model)}
    if not keep:
        return []
    base = LOADERS[role](base_path(model_cfg, role), model_cfg["dtype"])
    params = dict(base.named_parameters())  # tied weights once, as `merged_weights` yields them
    if params.keys() != merged.keys():
        raise RuntimeError(
            f"merged {role} weights do not match {role}'s names: {sorted(params.keys() ^ merged.keys())[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(merged[name])
    base.save_pretrained(out / role)
    save_adapter(model, out / f"{role}_adapter")
    return [out / role, out / f"{role}_adapter"]


def load_role(checkpoint: Path, role: str, model: torch.nn.Module) -> None:
    """Fill `model` in place with the checkpoint's weights of `role` (its keys `<role>.*`): from a file, or
    from a sharded folder (torch.distributed.checkpoint, in this process alone: `no_dist`). A LoRA run's
    checkpoint holds its adapters and value head only: the frozen base stays as `model` loaded it."""
    prefix = f"{role}."
    if checkpoint.is_dir():
        from torch.distributed.checkpoint import load

        state = {"state_dict": {prefix + name: tensor for name, tensor in model.state_dict().items()}}
        load(state, checkpoint_id=str(checkpoint), no_dist=True)
        model.load_state_dict({name[len(prefix) :]: tensor for name, tensor in state["state_dict"].items()})
        return
    saved = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)["state_dict"]
    state = {name[len(prefix) :]: tensor for name, tensor in saved.items() if name.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - frozen_names(model):
        raise ConfigError(
            f"{checkpoint}'s {role} does not match its run's model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def export_hf(checkpoint: str | Path, out: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, Path]:
    """Write `out/<role>` for each of `roles` the checkpoint's run trained (the critic only with PPO), each
    model built from the run's `model.path` / `model.critic_path` and filled with the checkpoint's weights
    (with LoRA, merged, and the adapters in `out/<role>_adapter`: `save_hf`); returns {role: folder}."""
    checkpoint, out = Path(checkpoint), Path(out)
    verify_checkpoint(checkpoint)
    config = saved_config(checkpoint)
    if config is None:
        raise ConfigError(f"{checkpoint} keeps no run config (saved outside scripts/train.py): its base is unknown")
    model_cfg = config["model"]
    trained = {"policy": True, "critic": ADVANTAGE_ESTIMATORS[config["algorithm"]["adv_estimator"]].needs_critic}
    written = {}
    for role in roles:
        if not trained[role]:
            continue
        model = LOADERS[role](base_path(model_cfg, role), model_cfg["dtype"])
        if lora_enabled(model_cfg.get("lora")):
            add_lora(model, model_cfg["lora"], role)
        load_role(checkpoint, role, model)
        for folder in save_hf(model, role, model_cfg, out):
            load_tokenizer(model_cfg["path"]).save_pretrained(folder)
        written[role] = out / role
    return written
