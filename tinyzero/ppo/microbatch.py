"""Micro-batches: which rows of a batch run together in one forward/backward pass, and at what width."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tinyzero.distributed import data_parallel_size
from tinyzero.ppo.experience import Batch


def chunks(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def trimmed(batch: Batch, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A micro-batch's `input_ids` and `attention_mask` without the columns that are padding in
    all its rows (prompts are left-padded, responses right-padded), and its longest response:
    each micro-batch runs at its own width, not the whole batch's."""
    ids, attention = batch.input_ids[idx], batch.attention_mask[idx]
    prompt_len = ids.shape[1] - batch.response_len
    used = attention[:, :prompt_len].any(0)
    first = int(used.float().argmax()) if used.any() else prompt_len
    longest = int(batch.response_mask[idx].sum(-1).max()) if len(idx) else 0
    return ids[:, first : prompt_len + longest], attention[:, first : prompt_len + longest], longest


def token_budget_micro_batches(indices: torch.Tensor, batch: Batch, max_tokens: int) -> list[torch.Tensor]:
    """Rows sorted by length (prompt + response tokens) and packed greedily so that a
    micro-batch's rows × its longest row stay within `max_tokens` (veRL's dynamic batch size);
    a row longer than the budget goes alone. The padded width that runs can be larger: the
    longest prompt plus the longest response of the micro-batch."""
    lengths = batch.attention_mask[indices].sum(-1)
    order = indices[torch.argsort(lengths, descending=True)]
    groups: list[list[int]] = []
    for row, length in zip(order.tolist(), lengths.sort(descending=True).values.tolist()):
        # sorted longest first: a group's first row is its longest
        if groups and (len(groups[-1][0]) + 1) * groups[-1][1] <= max_tokens:
            groups[-1][0].append(row)
        else:
            groups.append(([row], length))
    return [torch.tensor(rows) for rows, _ in groups]


def split_to_count(groups: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """`groups` with the largest split in two until there are `count` of them (at most one
    group per row: every rank holds as many rows as the others, so the count is reachable)."""
    groups = list(groups)
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda i: len(groups[i]))
        group = groups.pop(largest)
        groups[largest:largest] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


def micro_batches(
    indices: torch.Tensor, batch: Batch, rows: int, max_tokens: int | None, device: torch.device
) -> list[torch.Tensor]:
    """`rows` rows each, or as many as `max_tokens` (`algorithm.ppo_max_token_len_per_micro_batch`) hold.

    Every rank makes as many forward/backward passes as the rank with the most micro-batches:
    FSDP2 gathers and reduces in each pass, so unequal counts would leave ranks waiting on
    each other. A rank with fewer splits its largest micro-batches in two."""
    if not max_tokens:
        return chunks(indices, rows)
    groups = token_budget_micro_batches(indices, batch, max_tokens)
    if data_parallel_size() > 1:
        count = torch.tensor([len(groups)], device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        groups = split_to_count(groups, int(count.item()))
    return groups
