"""The update: the actor's and the critic's losses on a micro-batch, and one optimizer step over a
mini-batch with gradients accumulated over its micro-batches (skipped when not finite)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyzero.distributed import data_parallel_size, grad_norm_value, sum_ranks
from tinyzero.ppo.experience import Batch, Experience
from tinyzero.ppo.logprobs import response_values
from tinyzero.ppo.losses import aggregate_loss, entropy_bonus, kl_penalty, policy_loss, value_loss
from tinyzero.ppo.microbatch import micro_batches, trimmed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    """Rows `idx` of the step's batch at their own width: `input_ids`, `attention_mask` `[b, P' + longest]`
    on the training device. `num_tokens` / `num_seqs` count the valid tokens / sequences of the whole
    mini-batch over all ranks, over the rank count (each loss is this micro-batch's share: `aggregate_loss`)."""

    idx: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    longest: int
    num_tokens: float
    num_seqs: float


def actor_loss(micro: MicroBatch, policy_logprobs, experience: Experience, algorithm) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate − entropy_coeff · entropy (+ kl_loss_coef · KL to the reference with
    `use_kl_loss`). `policy_logprobs(input_ids, attention_mask, longest)` → (log-probs, entropy) `[b, longest]`."""
    logprobs, entropy = policy_logprobs(micro.input_ids, micro.attention_mask, micro.longest)
    idx, longest, counts = micro.idx, micro.longest, (micro.num_tokens, micro.num_seqs)
    mask = experience.rows("response_mask", idx, longest)
    on_policy = experience.old_logprobs is None  # the update's own log-probs, before its only step
    old_logprobs = logprobs.detach() if on_policy else experience.rows("old_logprobs", idx, longest)
    pg_loss, clipfrac, approx_kl = policy_loss(
        old_logprobs,
        logprobs,
        experience.rows("advantages", idx, longest),
        mask,
        algorithm.clip_ratio_low,
        algorithm.clip_ratio_high,
        algorithm.clip_ratio_c,
        algorithm.loss_agg_mode,
        *counts,
    )
    entropy_loss = entropy_bonus(entropy, mask, algorithm.loss_agg_mode, *counts)
    loss = pg_loss - algorithm.entropy_coeff * entropy_loss
    parts = {
        "actor/pg_loss": pg_loss.item(),
        "actor/entropy": entropy_loss.item(),
        "actor/clipfrac": clipfrac.item(),
        "actor/approx_kl": approx_kl.item(),
    }
    if algorithm.use_kl_loss:
        kl = kl_penalty(logprobs, experience.rows("ref_logprobs", idx, longest), algorithm.kl_loss_type)
        kl_loss = aggregate_loss(kl, mask, algorithm.loss_agg_mode, *counts)
        loss = loss + algorithm.kl_loss_coef * kl_loss
        parts["actor/kl_loss"] = kl_loss.item()
    return loss, parts


def critic_loss(micro: MicroBatch, critic, experience: Experience, algorithm) -> tuple[torch.Tensor, dict]:
    """The clipped value loss of the critic's values against the returns."""
    idx, longest = micro.idx, micro.longest
    values = response_values(critic, micro.input_ids, micro.attention_mask, longest)
    loss, clipfrac = value_loss(
        values,
        experience.rows("values", idx, longest),
        experience.rows("returns", idx, longest),
        experience.rows("response_mask", idx, longest),
        algorithm.clip_range_value,
        algorithm.loss_agg_mode,
        micro.num_tokens,
        micro.num_seqs,
    )
    return loss, {"critic/value_loss": loss.item(), "critic/clipfrac": clipfrac.item()}


def optimizer_step(
    optimizer,
    model: torch.nn.Module,
    loss_fn: Callable[[MicroBatch], tuple[torch.Tensor, dict]],
    mini_idx: torch.Tensor,
    batch: Batch,
    algorithm,
    device: torch.device,
    backward: Callable[[torch.Tensor], None],
    autocast,
) -> tuple[dict[str, float], bool]:
    """One optimizer step over the mini-batch `mini_idx`, accumulating gradients over micro-batches of
    `algorithm.ppo_micro_batch_size` rows; returns (the mini-batch's loss parts and grad norm, whether it stepped).

    Each micro-batch's loss is its share of the mini-batch's loss over all ranks, so the gradient does
    not depend on how the mini-batch is split. A non-finite loss or gradient skips the step."""
    optimizer.zero_grad()
    ranks = data_parallel_size()
    counts = torch.tensor([batch.response_mask[mini_idx].sum().item(), len(mini_idx)], dtype=torch.float64)
    num_tokens, num_seqs = (sum_ranks(counts.to(device)) / ranks).tolist()
    sums: dict[str, float] = {}
    rows, budget = algorithm.ppo_micro_batch_size, algorithm.ppo_max_token_len_per_micro_batch
    for idx in micro_batches(mini_idx, batch, rows, budget, device):
        ids, attention, longest = trimmed(batch, idx)
        micro = MicroBatch(idx, ids.to(device), attention.to(device), longest, num_tokens, num_seqs)
        with autocast():
            loss, parts = loss_fn(micro)
        backward(loss)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
    # the global mini-batch's values, the same on every rank (so is the decision to skip)
    values = sum_ranks(torch.tensor(list(sums.values()), device=device, dtype=torch.float64)) / ranks
    sums = dict(zip(sums, values.tolist()))
    sums["grad_norm"] = grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), algorithm.grad_clip))
    if not all(math.isfinite(value) for value in sums.values()):
        optimizer.zero_grad()
        return sums, False
    optimizer.step()
    optimizer.zero_grad()  # no gradients held while the engine generates
    return sums, True


class NonfiniteStreaks:
    """Updates skipped for a non-finite loss or gradient, in a row, per model: each is logged, and
    `limit` (`algorithm.nonfinite_abort_after`; 0: never) in a row end the run."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, {"actor": 0, "critic": 0}

    def record(self, name: str, stepped: bool, parts: dict[str, float], rl_step: int) -> None:
        if stepped:
            self.streak[name] = 0
            return
        self.streak[name] += 1
        bad = {key: value for key, value in parts.items() if not math.isfinite(value)}
        log.warning("step %d: skipped a %s update with non-finite %s", rl_step, name, bad)
        if self.limit and self.streak[name] >= self.limit:
            raise FloatingPointError(
                f"aborting at step {rl_step}: {self.limit} {name} updates in a row had a non-finite loss or "
                f"gradient ({bad}; algorithm.nonfinite_abort_after={self.limit}). Resume from the last checkpoint "
                f"(ckpt_path=last) with a lower learning rate or tighter grad_clip."
            )


def adamw_with_warmup(model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """AdamW (β = 0.9, 0.999) and a linear warm-up to `lr` over `warmup_steps` updates, then constant."""
    trainable = [param for param in model.parameters() if param.requires_grad]  # LoRA: the adapters alone
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    warmup = max(1, warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": schedule}
