"""LoRA for RL with peft, injected in place (`add_adapter`): the model keeps its Hugging Face class and
layout (`model.layers`, `lm_head`), so FSDP2's per-layer sharding, the fused head and the engines see it as
before. Each target linear layer computes W x + (alpha / r) · B A x; the embeddings and the head (tied in
Qwen2.5-3B) never get adapters, so the fused head reads the base `lm_head.weight` and the adapted hidden
states. The reference is the same model with its adapters disabled (`adapters_disabled`): no second copy.
An engine is sent merged weights, W + (alpha / r) · B A, under the base model's names (`merged_weights`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tinyzero.distributed import iter_full_weights
from tinyzero.errors import ConfigError

# the critic's value head (AutoModelForTokenClassification's `score`) is trained in full
VALUE_HEAD = "score"


def lora_enabled(lora_cfg) -> bool:
    return lora_cfg is not None and lora_cfg["rank"] > 0


def lora_config(lora_cfg, role: str):
    """peft's `LoraConfig` for `role` ("policy" or "critic") from `model.lora` (a config or a saved run's dict)."""
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ConfigError("model.lora.rank > 0 needs peft: pip install -e '.[lora]'") from error
    return LoraConfig(
        r=lora_cfg["rank"],
        lora_alpha=lora_cfg["alpha"],
        lora_dropout=lora_cfg["dropout"],
        target_modules=list(lora_cfg["target_modules"]),
        modules_to_save=[VALUE_HEAD] if role == "critic" else None,
        bias="none",
    )


def add_lora(model: torch.nn.Module, lora_cfg, role: str) -> torch.nn.Module:
    """Inject fresh adapters (B = 0: the adapted model starts equal to the base) and freeze everything else;
    returns `model`. The trained weights are float32 whatever the base's dtype (as peft's
    `autocast_adapter_dtype`): a bfloat16 AdamW update of 1e-5 would round away. A target that matches no
    layer is refused by peft, naming it."""
    model.add_adapter(lora_config(lora_cfg, role))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return model


def has_adapters(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "_hf_peft_config_loaded", False))


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model under the adapters: the LoRA run's reference."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def lora_scalings(model: torch.nn.Module) -> dict[str, float]:
    """{layer name: alpha / r} of each adapted layer (the active adapter's)."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module.scaling[module.active_adapters[0]]
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(base model's name, full tensor) pairs with each adapter merged: `X.base_layer.weight` becomes
    `X.weight` = W + scaling · B @ A (in float32, then W's dtype); a value head's trained copy
    (`modules_to_save`) replaces its original. Gathered one tensor at a time, on every rank in the same
    order (each `full_tensor` is a collective)."""
    scalings = lora_scalings(model)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in iter_full_weights(model):
        layer, part = lora_part(name)
        if layer is None:
            if (out := base_name(name)) is not None:
                yield out, tensor
            continue
        parts = pending.setdefault(layer, {})
        parts[part] = tensor
        if len(parts) == 3:
            base, down, up = (parts[key] for key in ("base", "lora_A", "lora_B"))
            del pending[layer]
            yield f"{layer}.weight", (base.float() + scalings[layer] * (up.float() @ down.float())).to(base.dtype)
    if pending:
        raise RuntimeError(f"adapted layers missing a part: {sorted(pending)}")


def lora_part(name: str) -> tuple[str | None, str | None]:
    """(adapted layer, "base" | "lora_A" | "lora_B") of a parameter's name, or (None, None) for any other
    parameter (a base layer's bias included: it is not merged)."""
    if name.endswith(".base_layer.weight"):
        return name.removesuffix(".base_layer.weight"), "base"
    for part in ("lora_A", "lora_B"):
        if f".{part}." in name:
            return name.split(f".{part}.")[0], part
    return None, None


def base_name(name: str) -> str | None:
    """The base model's name of an adapted model's parameter that is not an adapter's own; None for a
    value head's frozen original (its trained copy takes the name)."""
    if ".original_module." in name:
        return None
    if ".modules_to_save." in name:
        head, _, rest = name.partition(".modules_to_save.")
        return f"{head}.{rest.split('.', 1)[1]}"  # drop the adapter's name: score.modules_to_save.default.weight
    return name.replace(".base_layer.", ".")


def engine_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """What a rollout engine is sent: the policy's weights under the base model's names, adapters merged."""
    return merged_weights(model) if has_adapters(model) else iter_full_weights(model)


def frozen_names(model: torch.nn.Module, prefix: str = "") -> set[str]:
    """`prefix` + the names of the parameters that do not train: a LoRA run's base weights, reloaded from
    `model.path` rather than checkpointed."""
    params = model.named_parameters(remove_duplicate=False)  # a tied head is in the state dict under its own name
    return {prefix + name for name, param in params if not param.requires_grad}


def save_adapter(model: torch.nn.Module, out) -> None:
    """The adapters alone, in peft's format (`adapter_config.json`, `adapter_model.safetensors`):
    `PeftModel.from_pretrained(base, out)` loads them."""
    model.save_pretrained(out)
