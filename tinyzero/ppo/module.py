"""The LightningModule: one PPO / GRPO step from rollouts to updated policy and critic. `RolloutCallback`
generates before each step and adds the rollouts to the batch (`batch["rollouts"]`); `training_step` then
reads in the order it runs: pack the sequences, make the experience (score, old and reference log-probs, KL
in the reward, values, advantages), update (`ppo_epochs` passes of clipped updates over shuffled
mini-batches), log. It returns the step's decoded responses and scores."""

from __future__ import annotations

import logging
import time
from functools import partial

import lightning as L
import torch
from omegaconf import DictConfig

from tinyzero.distributed import sum_ranks
from tinyzero.errors import ConfigError
from tinyzero.kernels.backend import resolve_backend
from tinyzero.models.loading import load_critic, load_policy, weights_sha256
from tinyzero.models.lora import adapters_disabled, add_lora, frozen_names, lora_enabled
from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS
from tinyzero.ppo.experience import (
    Batch,
    Experience,
    check_rewards,
    pack,
    score_metrics,
    score_rollouts,
    sparse_token_rewards,
)
from tinyzero.ppo.kl_control import make_kl_controller
from tinyzero.ppo.logprobs import response_logprobs, response_values
from tinyzero.ppo.losses import kl_penalty
from tinyzero.ppo.masked import masked_mean
from tinyzero.ppo.microbatch import chunks, micro_batches, trimmed
from tinyzero.ppo.update import NonfiniteStreaks, actor_loss, adamw_with_warmup, critic_loss, optimizer_step
from tinyzero.rng import global_rng_state, set_global_rng_state

log = logging.getLogger(__name__)


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
        self.estimator = ADVANTAGE_ESTIMATORS[algorithm.adv_estimator]
        self.use_critic = self.estimator.needs_critic
        # KL to the reference is always measured (a kl_coef=0 run's drift is what a KL sweep asks
        # about); it enters the reward with β = kl_coef unless it is a loss term
        self.kl_in_reward = not algorithm.use_kl_loss
        self.kl_ctrl = make_kl_controller(algorithm)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.rl_step = 0
        self.nonfinite = NonfiniteStreaks(algorithm.nonfinite_abort_after)
        self.policy = self.critic = None
        # the frozen reference, out of the module's state: never checkpointed (reloaded from model.path), only
        # its weights' hash is, so a resume onto other reference weights is refused
        self.frozen: dict[str, torch.nn.Module] = {}
        self.reference_sha256: str | None = None
        # model.lora: adapters on policy and critic; the reference is the policy with them disabled, and the
        # frozen base weights are reloaded from model.path, not checkpointed (on_save_checkpoint)
        self.lora = lora_enabled(model.get("lora"))
        self.strict_loading = not self.lora

    @property
    def reference(self) -> torch.nn.Module | None:
        return self.frozen.get("reference")

    # ---- models -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        cfg = self.model_cfg
        self.policy = load_policy(cfg.path, cfg.dtype, cfg.attn_implementation)
        if self.use_critic:
            self.critic = load_critic(cfg.critic_path, cfg.dtype, cfg.attn_implementation)
        if self.lora:
            self.reference_sha256 = weights_sha256(self.policy)  # the base weights: the reference
            add_lora(self.policy, cfg.lora, "policy")
            if self.critic is not None:
                add_lora(self.critic, cfg.lora, "critic")
        else:
            reference = load_policy(cfg.path, cfg.dtype, cfg.attn_implementation).eval().requires_grad_(False)
            self.frozen["reference"], self.reference_sha256 = reference, weights_sha256(reference)
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
        if self.device_mesh is None and self.reference is not None:
            self.reference.to(self.device)  # FSDP2 placed the reference's shards; unregistered, nothing else moves it
        # decided once, where the tensors will live
        self.kernels_backend, reason = resolve_backend(self.kernels_backend, self.device)
        log.info("log-prob, entropy and GAE backend: %s (%s)", self.kernels_backend, reason)
        if self.head_kernels["fused_head"]:
            log.info("lm_head: fused with the log-prob (chunks of %s tokens)", self.head_kernels["chunk_tokens"])

    def configure_optimizers(self):
        models = [(self.policy, self.cfg.actor_lr)] + ([(self.critic, self.cfg.critic_lr)] if self.use_critic else [])
        return [adamw_with_warmup(model, lr, self.cfg.weight_decay, self.cfg.lr_warmup_steps) for model, lr in models]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.model_cfg.autocast_bf16)

    def logprobs_of(self, model: torch.nn.Module, with_entropy: bool = True):
        """`(input_ids, attention_mask, longest)` → `model`'s (log-probs, entropy or None) of the response tokens."""
        return partial(
            response_logprobs,
            model,
            temperature=self.rollout_temperature,
            backend=self.kernels_backend,
            with_entropy=with_entropy,
            share_prompts=self.share_prompts,
            **self.head_kernels,
        )

    def logprobs_only(self, model: torch.nn.Module):
        """`(input_ids, attention_mask, longest)` → `model`'s log-probs of the response tokens, no entropy."""
        logprobs = self.logprobs_of(model, with_entropy=False)
        return lambda *micro: logprobs(*micro)[0]

    # ---- one RL step, in the order it runs ------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if "rollouts" not in batch:
            raise RuntimeError("no rollouts for this batch: is RolloutCallback in trainer.callbacks?")
        rollouts, timings = batch["rollouts"], dict(batch["rollout_timings"])
        start = time.perf_counter()
        sequences = pack(batch["prompt_ids"], rollouts, batch["index"], self.tokenizer.pad_token_id)
        scores, texts = score_rollouts(self.task, self.tokenizer, rollouts, batch["ground_truth"])
        experience, metrics = self.make_experience(sequences, scores)
        metrics.update(self.task.behaviours(texts, [batch["ground_truth"][slot] for slot in rollouts.prompt_index]))
        timings["time/experience"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics.update(self.update(sequences, experience))
        timings["time/update"] = time.perf_counter() - start
        self.rl_step += 1
        self.log_step(metrics, timings, sequences, len(batch["prompt_ids"]))
        return {"texts": texts, "scores": scores}

    @torch.no_grad()
    def per_token(self, fn, batch: Batch) -> torch.Tensor:
        """`fn(ids, attention_mask, longest)` `[b, longest]` over trimmed micro-batches of
        `algorithm.log_prob_micro_batch_size` rows, as float32 `[B, R]` in the batch's row order
        (zero past each micro-batch's longest response)."""
        out = torch.zeros(len(batch.input_ids), batch.response_len, device=self.device)
        rows, budget = self.cfg.log_prob_micro_batch_size, self.cfg.ppo_max_token_len_per_micro_batch
        for idx in micro_batches(torch.arange(len(batch.input_ids)), batch, rows, budget, self.device):
            ids, attention, longest = trimmed(batch, idx)
            with self.autocast():
                out[idx.to(self.device), :longest] = fn(ids.to(self.device), attention.to(self.device), longest).float()
        return out

    def make_experience(self, batch: Batch, scores: torch.Tensor) -> tuple[Experience, dict[str, float]]:
        """Old and reference log-probs, the token rewards (the score on the last token, minus β·KL when
        the KL is in the reward), the critic's values and the advantages."""
        cfg = self.cfg
        check_rewards(self.task, scores)
        mask = batch.response_mask.to(self.device)
        metrics = score_metrics(scores, mask, self.max_new_tokens)
        old_logprobs = None
        if not self.on_policy(batch):
            self.policy.eval()
            old_logprobs = self.per_token(self.logprobs_only(self.policy), batch)
            self.policy.train()
        ref_logprobs = self.reference_logprobs(batch)
        token_rewards = sparse_token_rewards(scores, mask)
        if self.kl_in_reward:
            kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_penalty) * mask
            token_rewards = token_rewards - self.kl_ctrl.value * kl
            # the global batch's mean over sequences, as veRL: β stays the same on every rank
            per_sequence = masked_mean(kl, mask, dim=-1)
            kl_sum, sequences = sum_ranks(torch.stack([per_sequence.sum(), mask.new_tensor(len(mask))])).tolist()
            metrics["kl/reward_kl"] = kl_sum / sequences
            metrics["kl/coef"] = self.kl_ctrl.value
            self.kl_ctrl.update(kl_sum / sequences, n_steps=int(sequences))
        values = None
        if self.use_critic:
            self.critic.eval()
            values = self.per_token(partial(response_values, self.critic), batch) * mask
            self.critic.train()
            metrics["critic/values_mean"] = masked_mean(values, mask).item()
        advantages, returns = self.estimator.estimate(
            token_rewards,
            mask,
            values=values,
            group_index=batch.group_index.to(self.device),
            algorithm=cfg,
            backend=self.kernels_backend,
        )
        if returns is not None:
            metrics["critic/returns_mean"] = masked_mean(returns, mask).item()
        valid = advantages[mask.bool()]
        metrics["advantages/mean"] = masked_mean(advantages, mask).item()
        metrics["advantages/max"] = valid.max().item() if mask.any() else 0.0
        metrics["advantages/min"] = valid.min().item() if mask.any() else 0.0
        experience = Experience(mask, advantages, ref_logprobs, old_logprobs, values, returns)
        return experience, metrics

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """The reference's log-probs `[B, R]`: the frozen copy's, or with LoRA the policy's with its adapters off."""
        if self.reference is not None:
            return self.per_token(self.logprobs_only(self.reference), batch)
        self.policy.eval()
        with adapters_disabled(self.policy):
            ref_logprobs = self.per_token(self.logprobs_only(self.policy), batch)
        self.policy.train()
        return ref_logprobs

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

    def update(self, batch: Batch, experience: Experience) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled mini-batches: an actor step (from step `critic_warmup` on,
        counted from 1 as veRL does) and a critic step on each; the metrics are their means."""
        cfg = self.cfg
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        update_policy = self.rl_step + 1 >= cfg.critic_warmup
        steps = []
        if update_policy:
            policy_logprobs = self.logprobs_of(self.policy)
            loss = partial(actor_loss, policy_logprobs=policy_logprobs, experience=experience, algorithm=cfg)
            steps.append(("actor", optimizers[0], self.policy, loss))
        if self.use_critic:
            loss = partial(critic_loss, critic=self.critic, experience=experience, algorithm=cfg)
            steps.append(("critic", optimizers[1], self.critic, loss))
        totals: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch.input_ids), generator=self.shuffle)
            for mini_idx in chunks(order, self.mini_batch_rows(batch)):
                for name, optimizer, model, loss_fn in steps:
                    parts, stepped = optimizer_step(
                        optimizer,
                        model,
                        loss_fn,
                        mini_idx,
                        batch,
                        cfg,
                        self.device,
                        self.manual_backward,
                        self.autocast,
                    )
                    skipped += not stepped
                    self.nonfinite.record(name, stepped, parts, self.rl_step)
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

    def log_step(self, metrics: dict, timings: dict, batch: Batch, num_prompts: int) -> None:
        """The step's metrics and timings, at the RL step (as the callbacks log theirs, not at Lightning's
        0-based global step), and reward and seconds per step in the progress bar."""
        timings["time/step"] = sum(value for key, value in timings.items() if key.startswith("time/"))
        tokens = batch.response_mask.sum().item()
        metrics["perf/tokens_per_s"] = tokens / timings["time/step"]
        metrics["perf/generate_tokens_per_s"] = tokens / max(timings.get("time/generate", 0.0), 1e-9)
        metrics.update(timings)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.rl_step)
        self.log_dict(metrics, logger=False, on_step=True, on_epoch=False, batch_size=num_prompts)  # callback_metrics
        progress = {"reward": metrics["score/mean"], "s/step": timings["time/step"]}
        self.log_dict(progress, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=num_prompts)

    # ---- checkpoint state ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tinyzero"] = {
            "rl_step": self.rl_step,
            "kl_ctrl": self.kl_ctrl.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": global_rng_state(),
            "reference_sha256": self.reference_sha256,
        }
        if self.lora:  # the adapters and the value head; the base is model.path's, checked by its hash
            for name in self.frozen_weights():
                del checkpoint["state_dict"][name]

    def frozen_weights(self) -> set[str]:
        """The state-dict names of the policy's and critic's frozen base weights (a LoRA run's)."""
        names = frozen_names(self.policy, "policy.")
        return names | (frozen_names(self.critic, "critic.") if self.critic is not None else set())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint of a run's last step says its epoch's data ran out; a resumed run with more
        # steps must go on (its sampler starts at rl_step and yields nothing when the run is done).
        checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] = False
        state = checkpoint["tinyzero"]
        saved = state.get("reference_sha256")
        if saved is not None and saved != self.reference_sha256:
            raise ConfigError(
                f"the checkpoint's run measured its KL against other reference weights (sha256 {saved[:16]}...) "
                f"than model.path={self.model_cfg.path} holds ({self.reference_sha256[:16]}...): resume with the "
                "model.path the run started from"
            )
        for key in [k for k in checkpoint.get("state_dict", {}) if k.startswith("reference.")]:
            del checkpoint["state_dict"][key]  # saved before the reference was left out
        if self.lora:  # loaded with strict=False (the base is not saved): every trained weight must be there
            trained = set(self.state_dict()) - self.frozen_weights()
            missing = sorted(trained - set(checkpoint["state_dict"]))
            if missing:
                raise ConfigError(f"the checkpoint lacks {len(missing)} trained LoRA weights, e.g. {missing[0]}")
        self.rl_step = state["rl_step"]
        self.kl_ctrl.load_state_dict(state["kl_ctrl"])
        self.shuffle.set_state(state["shuffle"])
        set_global_rng_state(state["rng"])
