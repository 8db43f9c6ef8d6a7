"""The LightningModule: one PPO / GRPO step from rollouts to updated policy and critic.

The rollout callback hands each batch's rollouts to `set_rollouts`; `training_step` scores
them, computes old, reference and value estimates, advantages, and runs `ppo_epochs` passes
of clipped updates over shuffled mini-batches.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from tinyzero.models.loading import load_critic, load_policy
from tinyzero.ppo.advantages import compute_grpo_advantages
from tinyzero.ppo.experience import Batch, pack, score_rollouts
from tinyzero.ppo.kl_control import AdaptiveKLController, FixedKLController
from tinyzero.ppo.logprobs import gae, resolve_backend, response_logprobs, response_values
from tinyzero.ppo.losses import aggregate_loss, entropy_bonus, kl_penalty, policy_loss, value_loss
from tinyzero.ppo.masked import masked_mean, masked_whiten
from tinyzero.rng import global_rng_state, set_global_rng_state
from tinyzero.rollout.base import Rollouts
from tinyzero.tasks.behaviour import behaviour_rates

log = logging.getLogger(__name__)
ADV_ESTIMATORS = ("gae", "grpo")


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


def grad_norm_value(norm: torch.Tensor) -> float:
    """Total grad norm as a float; FSDP2 returns a DTensor that must be gathered first."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def data_parallel_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Σ of `tensor` over the data-parallel ranks (in place; the tensor itself on one rank)."""
    if data_parallel_size() > 1:
        dist.all_reduce(tensor)
    return tensor


class PPOModule(L.LightningModule):
    def __init__(
        self,
        model: DictConfig,
        algorithm: DictConfig,
        task,
        tokenizer,
        max_new_tokens: int,
        fsdp: DictConfig | None = None,
        kernels_backend: str = "torch",
        fused_lm_head: bool = False,
        chunk_tokens: int | str = "auto",
        rollout_temperature: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model_cfg, self.cfg, self.fsdp_cfg = model, algorithm, fsdp
        self.task, self.tokenizer = task, tokenizer
        self.kernels_backend, self.rollout_temperature = kernels_backend, rollout_temperature
        # kernels.fused_lm_head: log-probs through the chunked lm_head kernel, never [tokens, vocab] logits
        self.head_kernels = {"fused_head": fused_lm_head, "chunk_tokens": chunk_tokens}
        # model.share_prompt_forward: a micro-batch's rows of one prompt share one pass over it
        self.share_prompts = model.share_prompt_forward
        self.max_new_tokens = max_new_tokens  # rollout.max_new_tokens: a response this long was cut off
        self.use_critic = algorithm.adv_estimator == "gae"
        # KL to the reference is always measured (a kl_coef=0 run's drift is what a KL sweep asks
        # about); it enters the reward with β = kl_coef unless it is a loss term
        self.kl_in_reward = not algorithm.use_kl_loss
        self.kl_ctrl = (
            AdaptiveKLController(algorithm.kl_coef, algorithm.target_kl, algorithm.kl_horizon)
            if algorithm.kl_ctrl == "adaptive"
            else FixedKLController(algorithm.kl_coef)
        )
        self.shuffle = torch.Generator().manual_seed(seed)
        self.rl_step = 0
        self.nonfinite_streak = {"actor": 0, "critic": 0}  # skipped updates in a row, per model
        self.policy = self.critic = self.reference = None
        self._rollouts: tuple[Rollouts, dict] | None = None

    # ---- models -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        cfg = self.model_cfg
        self.policy = load_policy(cfg.path, cfg.dtype, cfg.attn_implementation)
        if self.use_critic:
            self.critic = load_critic(cfg.critic_path, cfg.dtype, cfg.attn_implementation)
        self.reference = load_policy(cfg.path, cfg.dtype, cfg.attn_implementation).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            for model in (self.policy, self.critic):
                if model is not None:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.device_mesh is not None:
            from tinyzero.distributed import fsdp2_policies, shard_fsdp2

            device_type = self.trainer.strategy.root_device.type
            for role, model in (("policy", self.policy), ("critic", self.critic), ("reference", self.reference)):
                if model is not None:
                    policies = fsdp2_policies(self.fsdp_cfg, role, device_type)
                    shard_fsdp2(model, self.device_mesh["data_parallel"], **policies)

    def on_fit_start(self) -> None:
        # decided once, where the tensors will live
        self.kernels_backend, reason = resolve_backend(self.kernels_backend, self.device)
        log.info("log-prob, entropy and GAE backend: %s (%s)", self.kernels_backend, reason)
        if self.head_kernels["fused_head"]:
            log.info("lm_head: fused with the log-prob (chunks of %s tokens)", self.head_kernels["chunk_tokens"])

    def configure_optimizers(self):
        def build(model, lr):
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lr, weight_decay=self.cfg.weight_decay, betas=(0.9, 0.999)
            )
            warmup = max(1, self.cfg.lr_warmup_steps)
            return {
                "optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)),
            }

        configs = [build(self.policy, self.cfg.actor_lr)]
        if self.use_critic:
            configs.append(build(self.critic, self.cfg.critic_lr))
        return configs

    # ---- rollouts in ---------------------------------------------------------------------
    def set_rollouts(self, rollouts: Rollouts, timings: dict[str, float]) -> None:
        self._rollouts = (rollouts, timings)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.model_cfg.autocast_bf16)

    def micro_batches(self, indices: torch.Tensor, batch: Batch, rows: int) -> list[torch.Tensor]:
        """`rows` rows each, or as many as `algorithm.ppo_max_token_len_per_micro_batch` tokens hold.

        Every rank makes as many forward/backward passes as the rank with the most micro-batches:
        FSDP2 gathers and reduces in each pass, so unequal counts would leave ranks waiting on
        each other. A rank with fewer splits its largest micro-batches in two."""
        budget = self.cfg.ppo_max_token_len_per_micro_batch
        if not budget:
            return chunks(indices, rows)
        groups = token_budget_micro_batches(indices, batch, budget)
        if data_parallel_size() > 1:
            count = torch.tensor([len(groups)], device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            groups = split_to_count(groups, int(count.item()))
        return groups

    @torch.no_grad()
    def _evaluate_in_micro_batches(self, fn, batch: Batch, micro: int) -> torch.Tensor:
        """`fn(ids, attention_mask, longest)` `[b, longest]` over trimmed micro-batches, as `[B, R]`
        in the batch's row order (zero past each micro-batch's longest response)."""
        out = torch.zeros(len(batch.input_ids), batch.response_len, device=self.device)
        for idx in self.micro_batches(torch.arange(len(batch.input_ids)), batch, micro):
            ids, attention, longest = trimmed(batch, idx)
            with self.autocast():
                out[idx.to(self.device), :longest] = fn(ids.to(self.device), attention.to(self.device), longest).float()
        return out

    def make_experience(
        self, prompts: dict, rollouts: Rollouts
    ) -> tuple[Batch, dict[str, torch.Tensor], dict[str, float]]:
        """Score, estimate old/ref log-probs and values, and compute advantages and returns."""
        cfg, micro = self.cfg, self.cfg.log_prob_micro_batch_size
        batch = pack(prompts["prompt_ids"], rollouts, prompts["index"], self.tokenizer.pad_token_id)
        scores, texts = score_rollouts(self.task, self.tokenizer, rollouts, prompts["ground_truth"])
        if not torch.isfinite(scores).all():
            raise ValueError(f"task {self.task.name} returned a non-finite reward")
        low, high = min(0.0, self.task.format_score), 1.0
        if ((scores < low) | (scores > high)).any():
            raise ValueError(
                f"task {self.task.name} returned rewards outside [{low}, {high}]: {scores.unique().tolist()}"
            )
        mask = batch.response_mask.to(self.device)
        length = mask.sum(-1).long()

        def policy_logprobs(model):
            return lambda ids, am, longest: response_logprobs(
                model,
                ids,
                am,
                longest,
                self.rollout_temperature,
                self.kernels_backend,
                with_entropy=False,
                share_prompts=self.share_prompts,
                **self.head_kernels,
            )[0]

        exp = {"response_mask": mask}
        metrics = {}
        if not self.on_policy(batch):
            self.policy.eval()
            exp["old_logprobs"] = self._evaluate_in_micro_batches(policy_logprobs(self.policy), batch, micro).float()
            self.policy.train()
        exp["ref_logprobs"] = self._evaluate_in_micro_batches(policy_logprobs(self.reference), batch, micro).float()
        # the sparse reward sits on the last response token
        token_scores = torch.zeros_like(mask)
        rows = torch.nonzero(length > 0).squeeze(-1)
        token_scores[rows, length[rows] - 1] = scores.to(self.device)[rows]
        token_rewards = token_scores
        if self.kl_in_reward:
            kl = kl_penalty(exp["old_logprobs"], exp["ref_logprobs"], cfg.kl_penalty) * mask
            token_rewards = token_scores - self.kl_ctrl.value * kl
            # the global batch's mean over sequences, as veRL: β stays the same on every rank
            per_sequence = masked_mean(kl, mask, dim=-1)
            kl_sum, sequences = sum_ranks(torch.stack([per_sequence.sum(), mask.new_tensor(len(mask))])).tolist()
            metrics["kl/reward_kl"] = kl_sum / sequences
            metrics["kl/coef"] = self.kl_ctrl.value
            self.kl_ctrl.update(kl_sum / sequences, n_steps=int(sequences))
        if self.use_critic:
            self.critic.eval()
            values = self._evaluate_in_micro_batches(
                lambda ids, am, longest: response_values(self.critic, ids, am, longest), batch, micro
            )
            self.critic.train()
            values = values.float() * mask
            advantages, returns = gae(token_rewards, values, mask, cfg.gamma, cfg.lam, self.kernels_backend)
            advantages = masked_whiten(advantages, mask, sum_ranks=sum_ranks) * mask
            exp.update(values=values, returns=returns)
            metrics["critic/values_mean"] = masked_mean(values, mask).item()
            metrics["critic/returns_mean"] = masked_mean(returns, mask).item()
        else:
            advantages = compute_grpo_advantages(
                token_rewards.sum(-1), batch.group_index.to(self.device), mask, norm_by_std=cfg.norm_adv_by_std
            )
        exp["advantages"] = advantages
        correct = scores >= 1.0
        metrics.update(
            {
                "score/mean": scores.mean().item(),
                "score/accuracy": correct.float().mean().item(),
                "score/format_rate": (scores > 0).float().mean().item(),
                "response_length/mean": length.float().mean().item(),
                "response_length/max": length.max().item(),
                "response_length/clip_rate": (length >= self.max_new_tokens).float().mean().item(),
                "advantages/mean": masked_mean(advantages, mask).item(),
                "advantages/max": advantages[mask.bool()].max().item() if mask.any() else 0.0,
                "advantages/min": advantages[mask.bool()].min().item() if mask.any() else 0.0,
            }
        )
        metrics.update(behaviour_rates(texts))
        self.last_texts = texts
        self.last_scores = scores
        return batch, exp, metrics

    # ---- updates -------------------------------------------------------------------------
    def mini_batch_rows(self, batch: Batch) -> int:
        """Sequences per optimizer step on this rank: ppo_mini_batch_size counts prompts over all
        ranks, and each rank updates on its share × n responses."""
        responses_per_prompt = len(batch.input_ids) // max(1, len(set(batch.prompt_slot)))
        return max(1, self.cfg.ppo_mini_batch_size // self.trainer.world_size) * responses_per_prompt

    def on_policy(self, batch: Batch) -> bool:
        """One epoch of one mini-batch: every forward of the update runs before its only optimizer
        step, so the old log-probs are the update's own (detached) and need no pass of their own.
        Not when the KL is in the reward: the reward needs the old log-probs before the update."""
        one_step = self.cfg.ppo_epochs == 1 and self.mini_batch_rows(batch) >= len(batch.input_ids)
        return one_step and not self.kl_in_reward

    def _step(self, optimizer, model, losses_fn, mini_idx, batch, micro) -> tuple[dict[str, float], bool]:
        """One optimizer step over a mini-batch, accumulating gradients over micro-batches.

        Each micro-batch's loss is its share of the mini-batch's loss over all ranks (valid tokens
        and sequences all-reduced, over the rank count since data-parallel gradients are
        averaged), so the gradient does not depend on how the mini-batch is split.
        """
        optimizer.zero_grad()
        ranks = data_parallel_size()
        counts = torch.tensor([batch.response_mask[mini_idx].sum().item(), len(mini_idx)], dtype=torch.float64)
        num_tokens, num_seqs = (sum_ranks(counts.to(self.device)) / ranks).tolist()
        sums: dict[str, float] = {}
        for idx in self.micro_batches(mini_idx, batch, micro):
            ids, attention, longest = trimmed(batch, idx)
            with self.autocast():
                loss, parts = losses_fn(
                    idx, ids.to(self.device), attention.to(self.device), longest, num_tokens, num_seqs
                )
            self.manual_backward(loss)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        # the global mini-batch's values, the same on every rank (so is the decision to skip)
        values = sum_ranks(torch.tensor(list(sums.values()), device=self.device, dtype=torch.float64)) / ranks
        sums = dict(zip(sums, values.tolist()))
        norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip))
        sums["grad_norm"] = norm
        if not all(math.isfinite(value) for value in sums.values()):
            optimizer.zero_grad()
            return sums, False
        optimizer.step()
        optimizer.zero_grad()  # no gradients held while the engine generates
        return sums, True

    def count_nonfinite(self, name: str, stepped: bool, parts: dict[str, float]) -> None:
        """A skipped update is logged; `algorithm.nonfinite_abort_after` of them in a row end the run."""
        if stepped:
            self.nonfinite_streak[name] = 0
            return
        self.nonfinite_streak[name] += 1
        bad = {key: value for key, value in parts.items() if not math.isfinite(value)}
        log.warning("step %d: skipped a %s update with non-finite %s", self.rl_step, name, bad)
        limit = self.cfg.nonfinite_abort_after
        if limit and self.nonfinite_streak[name] >= limit:
            raise FloatingPointError(
                f"aborting at step {self.rl_step}: {limit} {name} updates in a row had a non-finite loss or "
                f"gradient ({bad}; algorithm.nonfinite_abort_after={limit}). Resume from the last checkpoint "
                f"(ckpt_path=last) with a lower learning rate or tighter grad_clip."
            )

    def update(self, batch: Batch, exp: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        n, mini = len(batch.input_ids), self.mini_batch_rows(batch)
        # veRL counts steps from 1 and updates the actor once critic_warmup <= step
        update_policy = self.rl_step + 1 >= cfg.critic_warmup

        def rows(name: str, idx: torch.Tensor, longest: int) -> torch.Tensor:
            """A micro-batch's rows of an experience tensor `[B, R]`, cut to its longest response."""
            return exp[name][idx, :longest]

        def actor_losses(idx, ids, am, longest, num_tokens, num_seqs):
            logprobs, entropy = response_logprobs(
                self.policy,
                ids,
                am,
                longest,
                self.rollout_temperature,
                self.kernels_backend,
                share_prompts=self.share_prompts,
                **self.head_kernels,
            )
            mask = rows("response_mask", idx, longest)
            old_logprobs = rows("old_logprobs", idx, longest) if "old_logprobs" in exp else logprobs.detach()
            pg_loss, clipfrac, approx_kl = policy_loss(
                old_logprobs,
                logprobs,
                rows("advantages", idx, longest),
                mask,
                cfg.clip_ratio_low,
                cfg.clip_ratio_high,
                cfg.clip_ratio_c,
                cfg.loss_agg_mode,
                num_tokens,
                num_seqs,
            )
            entropy_loss = entropy_bonus(entropy, mask, cfg.loss_agg_mode, num_tokens, num_seqs)
            loss = pg_loss - cfg.entropy_coeff * entropy_loss
            parts = {
                "actor/pg_loss": pg_loss.item(),
                "actor/entropy": entropy_loss.item(),
                "actor/clipfrac": clipfrac.item(),
                "actor/approx_kl": approx_kl.item(),
            }
            if cfg.use_kl_loss:
                kl = kl_penalty(logprobs, rows("ref_logprobs", idx, longest), cfg.kl_loss_type)
                kl_loss = aggregate_loss(kl, mask, cfg.loss_agg_mode, num_tokens, num_seqs)
                loss = loss + cfg.kl_loss_coef * kl_loss
                parts["actor/kl_loss"] = kl_loss.item()
            return loss, parts

        def critic_losses(idx, ids, am, longest, num_tokens, num_seqs):
            values = response_values(self.critic, ids, am, longest)
            loss, clipfrac = value_loss(
                values,
                rows("values", idx, longest),
                rows("returns", idx, longest),
                rows("response_mask", idx, longest),
                cfg.clip_range_value,
                cfg.loss_agg_mode,
                num_tokens,
                num_seqs,
            )
            return loss, {"critic/value_loss": loss.item(), "critic/clipfrac": clipfrac.item()}

        totals: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.shuffle)
            for mini_idx in chunks(order, mini):
                steps = []
                if update_policy:
                    steps.append((optimizers[0], self.policy, actor_losses, "actor"))
                if self.use_critic:
                    steps.append((optimizers[1], self.critic, critic_losses, "critic"))
                for optimizer, model, losses_fn, name in steps:
                    parts, stepped = self._step(optimizer, model, losses_fn, mini_idx, batch, cfg.ppo_micro_batch_size)
                    skipped += not stepped
                    self.count_nonfinite(name, stepped, parts)
                    parts[f"{name}/grad_norm"] = parts.pop("grad_norm")
                    for key, value in parts.items():
                        totals.setdefault(key, []).append(value)
        metrics = {key: sum(values) / len(values) for key, values in totals.items()}
        metrics["actor/lr"] = optimizers[0].param_groups[0]["lr"]  # the rate this step's updates used
        schedulers = self.lr_schedulers() if self.use_critic else [self.lr_schedulers()]
        # a scheduler counts its own model's updates: the actor's stands still during critic warm-up
        if update_policy:
            schedulers[0].step()
        if self.use_critic:
            schedulers[1].step()
        metrics["train/skipped_updates"] = skipped
        return metrics

    def training_step(self, prompts: dict, batch_idx: int):
        if self._rollouts is None:
            raise RuntimeError("no rollouts for this batch: is RolloutCallback in trainer.callbacks?")
        (rollouts, timings), self._rollouts = self._rollouts, None
        start = time.perf_counter()
        batch, exp, metrics = self.make_experience(prompts, rollouts)
        timings["time/experience"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics.update(self.update(batch, exp))
        timings["time/update"] = time.perf_counter() - start
        timings["time/step"] = sum(value for key, value in timings.items() if key.startswith("time/"))
        tokens = batch.response_mask.sum().item()
        metrics["perf/tokens_per_s"] = tokens / timings["time/step"]
        metrics["perf/generate_tokens_per_s"] = tokens / max(timings.get("time/generate", 0.0), 1e-9)
        metrics.update(timings)
        self.rl_step += 1
        # logged at the RL step, as the callbacks log theirs, not at Lightning's 0-based global step
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.rl_step)
        batch_size = len(prompts["prompt_ids"])
        self.log_dict(metrics, logger=False, on_step=True, on_epoch=False, batch_size=batch_size)  # callback_metrics
        progress = {"reward": metrics["score/mean"], "s/step": timings["time/step"]}
        self.log_dict(progress, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=batch_size)

    # ---- checkpoint state ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tinyzero"] = {
            "rl_step": self.rl_step,
            "kl_ctrl": self.kl_ctrl.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": global_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint of a run's last step says its epoch's data ran out; a resumed run with more
        # steps must go on (its sampler starts at rl_step and yields nothing when the run is done).
        checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] = False
        state = checkpoint["tinyzero"]
        self.rl_step = state["rl_step"]
        self.kl_ctrl.load_state_dict(state["kl_ctrl"])
        self.shuffle.set_state(state["shuffle"])
        set_global_rng_state(state["rng"])
