"""FSDP2 helpers: sharding per decoder layer, and gathering full weights one tensor at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def shard_fsdp2(model: torch.nn.Module, mesh) -> None:
    """`fully_shard` each decoder layer, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded `DTensor` is all-gathered (a collective: every rank must call)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def iter_full_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) pairs, gathered and yielded one at a time, so a sharded
    model is never held whole twice. Tied weights appear once, under their first name."""
    for name, param in model.named_parameters():
        tensor = full_tensor(param.detach())
        yield name, tensor if dtype is None else tensor.to(dtype)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every weight, for `save_pretrained` (tied weights keep both names)."""
    return {name: full_tensor(t.detach()).cpu() for name, t in model.state_dict().items()}
