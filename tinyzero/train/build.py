"""From a composed Hydra config to (trainer, module, datamodule); validation first, models last."""

from __future__ import annotations

import glob
import importlib.util
import inspect
import logging
from functools import partial
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from tinyzero.data.datamodule import PromptDataModule
from tinyzero.data.sources import held_out_rows
from tinyzero.errors import ConfigError
from tinyzero.models.attention import resolve_attention
from tinyzero.models.loading import load_tokenizer
from tinyzero.models.lora import lora_enabled
from tinyzero.ppo.module import PPOModule
from tinyzero.rollout.base import SamplingParams
from tinyzero.rollout.select import resolve_engine
from tinyzero.train.checkpointing import resume_path, run_config
from tinyzero.train.config_keys import check_command
from tinyzero.train.console import quiet_known_noise
from tinyzero.train.kinds import check_values
from tinyzero.train.schema import SCHEMA, check_not_greedy

log = logging.getLogger(__name__)

# a path-like data source (not a hub name such as Jiayi-Pan/Countdown-Tasks-3to4) must exist
LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")


def check_task_keys(task_cfg: DictConfig) -> None:
    """A recipe's task settings belong to its task: switching `task=` on a recipe keeps them, so
    name the keys the new task does not take instead of failing inside its constructor."""
    target = get_class(task_cfg._target_)
    allowed = set(inspect.signature(target).parameters)
    foreign = sorted(set(task_cfg) - allowed - {"_target_"})
    if foreign:
        raise ConfigError(
            f"{', '.join('task.' + key for key in foreign)} do not belong to {task_cfg._target_}, which takes "
            f"{sorted(allowed)}; a recipe's task settings stay when task= changes: remove them with "
            f"{' '.join('~task.' + key for key in foreign)} or use a recipe made for this task"
        )


def check_pretrain_task(cfg: DictConfig) -> None:
    """A recipe that pre-trains its own base model is tuned for one task (its lengths, steps and
    pre-training text); `task=` another would pre-train and train a model that cannot learn."""
    made_for = OmegaConf.select(cfg, "model.pretrain.task")
    if made_for is not None and made_for != cfg.task.name:
        raise ConfigError(
            f"task={cfg.task.name}: {recipe_name(cfg)} pre-trains its base model for task {made_for}; "
            f"use a recipe made for {cfg.task.name} (conf/experiment/, e.g. multiplication_tiny), or add "
            f"model.pretrain.task={cfg.task.name} to pre-train one with this recipe's settings"
        )


def recipe_name(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("experiment"):
        return f"experiment={HydraConfig.get().runtime.choices.experiment}"
    return "this recipe"


def check_lora_and_offload(cfg: DictConfig) -> None:
    """LoRA needs peft and, for now, one device; FSDP2's CPU offload needs its device mesh (trainer=fsdp,
    one GPU or more): a one-device trainer would silently ignore fsdp.offload_*."""
    from tinyzero.train.memory import shards_with_fsdp2

    if lora_enabled(cfg.model.get("lora")):
        if importlib.util.find_spec("peft") is None:
            raise ConfigError("model.lora.rank > 0 needs peft: pip install -e '.[lora]'")
        if shards_with_fsdp2(cfg):
            raise ConfigError(
                "model.lora.rank > 0 runs on one device for now (trainer=gpu or cpu); set model.lora.rank=0 "
                "for trainer=fsdp"
            )
    offloads = [key for key in ("offload_optimizer", "offload_reference") if cfg.fsdp[key]]
    if offloads and not shards_with_fsdp2(cfg):
        raise ConfigError(
            f"{', '.join('fsdp.' + key + '=true' for key in offloads)}: FSDP2's CPU offload needs a device mesh, "
            "which trainer=fsdp builds (trainer=fsdp trainer.devices=1 on one GPU); this trainer would ignore it"
        )


def validate(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Fail on a wrong value before anything loads, naming the key and what is allowed (each key's entry
    in tinyzero/train/schema.py, then the rules across keys here); `overrides` (the command line's, from
    Hydra when it runs the script) may not set a key this recipe never reads nor add one with `+` that
    nothing reads."""
    check_values(cfg, SCHEMA)
    check_not_greedy(cfg, "rollout.n", "rollout.temperature")
    check_task_keys(cfg.task)
    check_pretrain_task(cfg)
    if cfg.model.share_prompt_forward and (cfg.model.gradient_checkpointing or cfg.kernels.fused_lm_head):
        raise ConfigError(
            "model.share_prompt_forward=true passes each prompt's cache to its responses, which "
            "model.gradient_checkpointing and kernels.fused_lm_head do not keep: set it or both of them to false"
        )
    if cfg.data.train_batch_size % cfg.algorithm.ppo_mini_batch_size:
        raise ConfigError(
            f"data.train_batch_size={cfg.data.train_batch_size} must be a multiple of "
            f"algorithm.ppo_mini_batch_size={cfg.algorithm.ppo_mini_batch_size}"
        )
    source = str(cfg.data.source)
    if source.startswith(LOCAL_PATH_PREFIXES) and not Path(source).expanduser().exists():
        raise ConfigError(f"data.source={source} does not exist (a folder of parquet files, a hub name or 'generate')")
    check_lora_and_offload(cfg)
    if "wandb" in (cfg.get("logger") or {}) and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package: pip install -e '.[wandb]'")
    if overrides:
        check_command(cfg, overrides)


def command_overrides() -> list[str]:
    """The command line's overrides when Hydra runs the script (none under the compose API)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def device_type(cfg: DictConfig) -> str:
    """Where the models will live: what the engine and attention choices depend on."""
    return "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"


def build(cfg: DictConfig, overrides: list[str] | None = None):
    """`overrides`: the command line's (Hydra's, when it runs the script: see `validate`)."""
    validate(cfg, command_overrides() if overrides is None else overrides)
    quiet_known_noise()
    where = device_type(cfg)
    engine, _ = resolve_engine(cfg.rollout.engine.kind, where)  # an engine that cannot run fails now
    attention, reason = resolve_attention(cfg.model.attn_implementation, where)
    log.info("attention: %s (%s)", attention, reason)
    model_cfg = OmegaConf.merge(cfg.model, {"attn_implementation": attention})
    hf_logging.disable_progress_bar()  # one bar per weight load drowns Lightning's
    task = instantiate(cfg.task)
    if cfg.model.get("pretrain"):
        from tinyzero.models.pretrain import ensure_tiny_base

        # a private RNG stream: a run behaves the same whether the base model was cached or built now
        with torch.random.fork_rng():
            settings = OmegaConf.to_container(cfg.model.pretrain)
            del settings["task"]
            held_out = held_out_rows(task, cfg.data) if settings.pop("hold_out_test") else []
            ensure_tiny_base(cfg.model.path, task, cfg.data.template, held_out=held_out, **settings)
    memory_plan_gib = None
    if where == "cuda":
        from tinyzero.train.memory import check_at_startup
        from tinyzero.train.memory_estimate import GIB

        plan = check_at_startup(cfg, engine)
        memory_plan_gib = {"train": plan.train_total / GIB, "generate": plan.generate_total / GIB}
    tokenizer = load_tokenizer(cfg.model.path)
    datamodule = PromptDataModule(task, tokenizer, **cfg.data)
    sampling = SamplingParams(
        n=cfg.rollout.n,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        seed=cfg.rollout.seed,
    )
    # The rollout callback builds the engine once the ranks exist, before the models load.
    engine_factory = partial(
        instantiate(cfg.rollout.engine),
        path=cfg.model.path,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=cfg.rollout.dtype,
        attn_implementation=model_cfg.attn_implementation,
        max_model_len=cfg.data.max_prompt_length
        + max(cfg.rollout.max_new_tokens, cfg.callbacks.rollout.eval_max_new_tokens or 0),
        seed=cfg.seed,
    )
    callbacks = []
    for name, callback_cfg in cfg.callbacks.items():
        extra = (
            {"engine_factory": engine_factory, "sampling": sampling, "memory_plan_gib": memory_plan_gib}
            if name == "rollout"
            else {}
        )
        callbacks.append(instantiate(callback_cfg, **extra, _convert_="object"))
    loggers = [instantiate(logger_cfg) for logger_cfg in cfg.logger.values()] if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    module = PPOModule(
        model_cfg,
        cfg.algorithm,
        task,
        tokenizer,
        max_new_tokens=cfg.rollout.max_new_tokens,
        fsdp=cfg.fsdp,
        kernels_backend=cfg.kernels.backend,
        fused_lm_head=cfg.kernels.fused_lm_head,
        chunk_tokens=cfg.kernels.chunk_tokens,
        rollout_temperature=cfg.rollout.temperature,
        seed=cfg.seed,
    )
    return trainer, module, datamodule


def resume_from(cfg: DictConfig) -> str | None:
    """`ckpt_path` made safe: a given checkpoint is verified whole; `last` is the newest good one saved
    with this run's settings (see `checkpointing.RUN_INDEPENDENT_KEYS`) in this run's checkpoint folder,
    a run beside it (the jobs of its sweep), or an earlier run or sweep of the same `run_name` (None when
    there is none: a first launch)."""
    if cfg.ckpt_path is None:
        return None
    directories = [
        cfg.callbacks.checkpoint.dirpath,
        *glob.glob(f"{cfg.paths.output_dir}/../*/checkpoints"),
        *glob.glob(f"{cfg.paths.log_dir}/runs/{cfg.run_name}/*/checkpoints"),
        *glob.glob(f"{cfg.paths.log_dir}/multirun/{cfg.run_name}/*/*/checkpoints"),
    ]
    return resume_path(cfg.ckpt_path, directories, run_config(cfg))
