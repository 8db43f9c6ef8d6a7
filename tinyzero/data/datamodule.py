"""Prompts for training and evaluation: tokenized once, served one RL step at a time."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tinyzero.data.sources import ensure_data, read_rows
from tinyzero.errors import ConfigError
from tinyzero.tasks import render_prompt

log = logging.getLogger(__name__)


OVERLONG_PROMPTS = ("drop", "truncate", "error")


class PromptSet(Dataset):
    """Tokenized prompts with their ground truths. Prompts over `max_prompt_length` tokens are
    dropped, truncated from the left (the end of a prompt cues the answer), or an error, as
    `overlong` says; `num_overlong` counts them."""

    def __init__(
        self,
        task,
        tokenizer,
        rows: list[dict],
        template: str,
        max_prompt_length: int,
        split: str,
        overlong: str,
    ):
        if overlong not in OVERLONG_PROMPTS:
            raise ConfigError(
                f"data.overlong_prompts={overlong!r} is not allowed; choose one of {list(OVERLONG_PROMPTS)}"
            )
        texts = [render_prompt(task.question(row), template) for row in rows]
        token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        overlong_rows = [i for i, ids in enumerate(token_ids) if len(ids) > max_prompt_length]
        self.num_overlong = len(overlong_rows)
        if overlong_rows and overlong == "error":
            i = overlong_rows[0]
            raise ConfigError(
                f"{split}: {len(overlong_rows)} of {len(rows)} prompts are longer than data.max_prompt_length="
                f"{max_prompt_length} (row {i} has {len(token_ids[i])} tokens); raise the limit or set "
                f"data.overlong_prompts to drop or truncate"
            )
        if overlong == "truncate":
            token_ids = [ids[-max_prompt_length:] for ids in token_ids]
        self.items = [
            {"prompt_ids": ids, "ground_truth": task.ground_truth(row), "index": i}
            for i, (ids, row) in enumerate(zip(token_ids, rows))
            if len(ids) <= max_prompt_length
        ]
        if overlong_rows:
            log.warning(
                "%s: %s %d of %d prompts longer than data.max_prompt_length=%d",
                split,
                "truncated" if overlong == "truncate" else "dropped",
                len(overlong_rows),
                len(rows),
                max_prompt_length,
            )
        if not self.items:
            raise ConfigError(f"{split}: every prompt is longer than data.max_prompt_length={max_prompt_length}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate_prompts(items: list[dict]) -> dict:
    return {
        "prompt_ids": [item["prompt_ids"] for item in items],
        "ground_truth": [item["ground_truth"] for item in items],
        "index": torch.tensor([item["index"] for item in items]),
    }


class StepBatchSampler(Sampler):
    """The prompts of RL steps `start_step … total_steps − 1`, as a pure function of the step.

    Step s reads slot s mod E of epoch ⌊s / E⌋ (E = steps per epoch) of a permutation seeded by
    the epoch; rank r of W takes every W-th prompt of the global batch. Resuming at step s needs
    nothing but s.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size > num_items:
            raise ConfigError(f"data.train_batch_size={batch_size} exceeds the {num_items} training prompts")
        if batch_size % world_size:
            raise ConfigError(f"data.train_batch_size={batch_size} must divide evenly over {world_size} ranks")
        self.num_items, self.batch_size, self.total_steps, self.seed = num_items, batch_size, total_steps, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.steps_per_epoch = num_items // batch_size

    def batch(self, step: int) -> list[int]:
        epoch, slot = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
        return order[slot * self.batch_size : (slot + 1) * self.batch_size][self.rank :: self.world_size].tolist()

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        # The whole run, not what is left: a resumed Lightning loop counts on from `start_step`.
        return self.total_steps


class PromptDataModule(L.LightningDataModule):
    def __init__(
        self,
        task,
        tokenizer,
        dir: str,
        source: str,
        train_size: int,
        test_size: int,
        seed: int,
        template: str,
        max_prompt_length: int,
        overlong_prompts: str,
        train_batch_size: int,
        epochs: int,
        max_steps: int | None,
    ):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.dir, self.source, self.seed = dir, source, seed
        self.train_size, self.test_size = train_size, test_size
        self.template, self.max_prompt_length = template, max_prompt_length
        self.overlong_prompts = overlong_prompts
        self.train_batch_size, self.epochs, self.max_steps = train_batch_size, epochs, max_steps
        self.train_set = self.test_set = None

    def prepare_data(self) -> None:
        ensure_data(self.task, self.dir, self.source, self.train_size, self.test_size, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        paths = ensure_data(self.task, self.dir, self.source, self.train_size, self.test_size, self.seed)
        self.train_set, self.test_set = (
            PromptSet(
                self.task,
                self.tokenizer,
                read_rows(paths[split], self.task.columns),
                self.template,
                self.max_prompt_length,
                split,
                self.overlong_prompts,
            )
            for split in ("train", "test")
        )

    @property
    def total_steps(self) -> int:
        steps = self.epochs * (len(self.train_set) // self.train_batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        sampler = StepBatchSampler(
            len(self.train_set),
            self.train_batch_size,
            self.total_steps,
            self.seed,
            start_step=module.rl_step,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collate_prompts)

    def test_shard(self, rank: int, world_size: int) -> list[dict]:
        """This rank's share of the held-out prompts (every `world_size`-th)."""
        return self.test_set.items[rank::world_size]
