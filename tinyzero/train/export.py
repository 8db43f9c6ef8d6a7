"""A training checkpoint's models as Hugging Face folders (`from_pretrained` loads them): the policy and,
with PPO, the critic. Works on both kinds of `step_K.ckpt`: one file (a single process, or FSDP2 with
`save_distributed_checkpoint: false`) and a sharded folder (`trainer=fsdp`), read in one process without
the ranks that wrote it (`python scripts/export_hf.py CHECKPOINT --out DIR`)."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyzero.errors import ConfigError
from tinyzero.models.loading import load_critic, load_policy, load_tokenizer
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.train.checkpointing import saved_config, verify_checkpoint

ROLES = ("policy", "critic")


def load_role(checkpoint: Path, role: str, model: torch.nn.Module) -> None:
    """Fill `model` in place with the checkpoint's weights of `role` (its keys `<role>.*`): from a file, or
    from a sharded folder (torch.distributed.checkpoint, in this process alone: `no_dist`)."""
    prefix = f"{role}."
    if checkpoint.is_dir():
        from torch.distributed.checkpoint import load

        state = {"state_dict": {prefix + name: tensor for name, tensor in model.state_dict().items()}}
        load(state, checkpoint_id=str(checkpoint), no_dist=True)
        model.load_state_dict({name[len(prefix) :]: tensor for name, tensor in state["state_dict"].items()})
        return
    saved = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)["state_dict"]
    model.load_state_dict({name[len(prefix) :]: tensor for name, tensor in saved.items() if name.startswith(prefix)})


def export_hf(checkpoint: str | Path, out: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, Path]:
    """Write `out/<role>` for each of `roles` the checkpoint's run trained (the critic only with PPO), each
    model built from the run's `model.path` / `model.critic_path` and filled with the checkpoint's weights;
    returns {role: folder}."""
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
        base = model_cfg["path"] if role == "policy" else model_cfg["critic_path"]
        model = (load_policy if role == "policy" else load_critic)(base, model_cfg["dtype"])
        load_role(checkpoint, role, model)
        model.save_pretrained(out / role)
        load_tokenizer(model_cfg["path"]).save_pretrained(out / role)
        written[role] = out / role
    return written
