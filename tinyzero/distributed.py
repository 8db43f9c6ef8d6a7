"""Data-parallel helpers: rank counts and sums, FSDP2 sharding per decoder layer, and gathering full
weights one tensor at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from tinyzero.errors import ConfigError


def data_parallel_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Σ of `tensor` over the data-parallel ranks (in place; the tensor itself on one rank)."""
    if data_parallel_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def grad_norm_value(norm: torch.Tensor) -> float:
    """Total grad norm as a float; FSDP2 returns a DTensor that must be gathered first."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def fsdp2_policies(fsdp, role: str, device_type: str) -> dict:
    """`fully_shard` keyword arguments for `role` ("policy", "critic" or "reference") from the
    `fsdp` config: bf16 compute with fp32 gradient reduction, and CPU offload where asked."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    from tinyzero.models.loading import resolve_dtype

    kwargs = {}
    if fsdp.param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=resolve_dtype(fsdp.param_dtype), reduce_dtype=resolve_dtype(fsdp.reduce_dtype)
        )
    key = "offload_reference" if role == "reference" else "offload_optimizer"
    if fsdp[key]:
        if device_type != "cuda":
            raise ConfigError(f"fsdp.{key}=true needs CUDA (FSDP2's CPUOffloadPolicy), the models are on {device_type}")
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    return kwargs


def shard_fsdp2(model: torch.nn.Module, mesh, **policies) -> None:
    """`fully_shard` each decoder layer, then the root (embeddings, norm, head): one layer's
    weights are gathered at a time. `policies`: `mp_policy`, `offload_policy`."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, **policies)
    fully_shard(model, mesh=mesh, **policies)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded `DTensor` is all-gathered (a collective: every rank must call)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def iter_full_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) pairs, gathered and yielded one at a time, so a sharded
    model is never held whole twice. Tied weights appear once, under their first name."""
    for name, param in model.named_parameters():
        tensor = full_tensor(param.detach())
        yield name, tensor if dtype is None else tensor.to(dtype)


def full_state_dict(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """A CPU copy of every weight, for `save_pretrained` (tied weights keep both names). Every rank takes
    part in each gather; only one that `keep`s holds the copies (the others return {}), so a sharded
    model's export keeps one full CPU copy, not one per rank."""
    state = {}
    for name, tensor in model.state_dict().items():
        whole = full_tensor(tensor.detach())
        if keep:
            state[name] = whole.cpu()
    return state


def share_prompts(prompts: list, seed: int, group) -> tuple[list, int, int]:
    """vLLM's tensor-parallel ranks must run identical requests: every prompt of the `group`
    in rank order, the group's first rank's seed, and where this rank's own prompts start."""
    import torch.distributed as dist

    shares = [None] * dist.get_world_size(group)
    dist.all_gather_object(shares, (list(prompts), seed), group=group)
    me = dist.get_rank(group)
    start = sum(len(share) for share, _ in shares[:me])
    return [prompt for share, _ in shares for prompt in share], shares[0][1], start


def gather_rows(rows: list) -> list:
    """Every rank's `rows`, concatenated in rank order (this rank's alone outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(rows)
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, list(rows))
    return [row for share in shares for row in share]
