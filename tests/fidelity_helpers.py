"""Test stand-ins for tests/ppo/test_fidelity.py, importable by spawned ranks (tests/ on PYTHONPATH).

`FixedEngine` answers each prompt with responses that depend only on the prompt's token ids,
so one rank and two ranks train on the same rollouts; `ParityTask` rewards them unevenly.
`Probe` writes, per rank, the KL coefficient after every step and the gradients of each
model's first optimizer step.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import lightning as L
import torch

from tinyzero.distributed import full_tensor, sum_ranks
from tinyzero.ppo.masked import masked_whiten
from tinyzero.rollout.base import Rollouts, check_tags
from tinyzero.tasks import CountdownTask


class ParityTask(CountdownTask):
    """Countdown's prompts; reward 1 for a response of odd text length, else 0."""

    def score(self, response: str, ground_truth: dict) -> float:
        return float(len(response) % 2)


class FixedEngine:
    """Responses of 1..`longest` (default `max_new_tokens`) random tokens, seeded by the prompt;
    a response shorter than `max_new_tokens` ends with EOS, as an engine stops there."""

    def __init__(self, eos_token_id: int, longest: int | None = None, **_):
        self.eos_token_id, self.longest = eos_token_id, longest
        self.awake: set[str] = set()
        self.last: Rollouts | None = None

    def sleep(self) -> None:
        self.awake.clear()

    def wake_up(self, tags=None) -> None:
        self.awake.update(check_tags(tags))

    def load_weights(self, named_tensors) -> None:
        for _ in named_tensors:  # gathering a sharded weight is a collective: every rank takes all
            pass

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, prompt_token_ids, sampling) -> Rollouts:
        rollouts = Rollouts(prompt_index=[], response_ids=[])
        for i, prompt in enumerate(prompt_token_ids):
            for j in range(sampling.n):
                rng = random.Random(zlib.crc32(json.dumps([list(prompt), j]).encode()))
                length = rng.randint(1, self.longest or sampling.max_new_tokens)
                response = [rng.randrange(5, 256) for _ in range(length)]
                if length < sampling.max_new_tokens:
                    response[-1] = self.eos_token_id
                rollouts.prompt_index.append(i)
                rollouts.response_ids.append(response)
        self.last = rollouts
        return rollouts


class Probe(L.Callback):
    """Per rank: `beta_rank_R.json` (β at the start and after each step, and each step's global
    metrics) and, on rank 0, `grads_step_K.pt` (each optimizer's first step of step K, gathered)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.record: dict[str, float] = {}
        self.grads: list[list[torch.Tensor]] = []
        self.seen: set[int] = set()

    def write(self, trainer) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"beta_rank_{trainer.global_rank}.json").write_text(json.dumps(self.record))

    def on_train_start(self, trainer, module) -> None:
        self.record["start"] = module.kl_ctrl.value
        self.write(trainer)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if id(optimizer) in self.seen:
            return
        self.seen.add(id(optimizer))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.grads.append([full_tensor(p.grad.detach()).clone() for p in params if p.grad is not None])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.record[f"step_{module.rl_step}"] = module.kl_ctrl.value
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/value_loss", "critic/grad_norm", "kl/reward_kl"):
            if key in trainer.callback_metrics:
                self.record[f"step_{module.rl_step}/{key}"] = float(trainer.callback_metrics[key])
        self.write(trainer)
        if trainer.global_rank == 0:
            torch.save(self.grads, self.path / f"grads_step_{module.rl_step}.pt")
        self.grads, self.seen = [], set()


def whiten_on_rank(rank: int, port: int, values: torch.Tensor, mask: torch.Tensor, results) -> None:
    """One of two gloo ranks: whiten this rank's half of the rows with global statistics."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = len(values) // 2
    rows = slice(rank * half, (rank + 1) * half)
    results[rank] = masked_whiten(values[rows], mask[rows], sum_ranks=sum_ranks)
    torch.distributed.destroy_process_group()
