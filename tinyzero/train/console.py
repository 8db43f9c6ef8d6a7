"""What a run prints: a bar over the run's RL steps, samples on lines of their own, and none of the
library messages that look like errors but are not."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


class RLProgressBar(TQDMProgressBar):
    """Lightning's bar counting RL steps of the whole run (`RL steps: 120/600`), where Lightning's
    counts batches of "Epoch 0" (one epoch is the whole run here) and, resumed, starts from 0 of an
    unknown total."""

    def on_train_start(self, trainer, module) -> None:
        super().on_train_start(trainer, module)
        self.count_rl_steps(trainer, module)  # a resumed run starts mid-epoch: no epoch start comes

    def on_train_epoch_start(self, trainer, module, *args) -> None:
        super().on_train_epoch_start(trainer, module, *args)
        self.count_rl_steps(trainer, module)

    def count_rl_steps(self, trainer, module) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.datamodule.total_steps)
        bar.initial = bar.n = module.rl_step  # a resumed run goes on from its checkpoint's step
        bar.set_description("RL steps")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if self._should_update(module.rl_step, bar.total):
            _update_n(bar, module.rl_step)
            bar.set_postfix(self.get_metrics(trainer, module))


def show(trainer, text: str) -> None:
    """Print above the progress bar, not into its line."""
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled and bar._train_progress_bar is not None:
        bar.print(text)
    else:
        print(text, flush=True)


def format_samples(step: int, prompts: list[str], targets: list, responses: list[str], rewards: list[float]) -> str:
    """One block per sample: its prompt, target, response and reward, each on a line of its own."""
    blocks = []
    for k, (prompt, target, response, reward) in enumerate(zip(prompts, targets, responses, rewards), 1):
        blocks.append(
            f"[step {step}] sample {k} of {len(prompts)}, reward {reward:.2f}\n"
            f"  prompt:   {prompt.strip()!r}\n  target:   {target}\n  response: {response.strip()!r}"
        )
    return "\n".join(blocks)


# (message pattern, why it is noise here); each is a warning Lightning gives on every run
KNOWN_NOISE = (
    (r"Found \d+ module\(s\) in eval mode", "the reference model is frozen in eval mode on purpose"),
    (
        r"You're resuming from a checkpoint that ended before the epoch ended",
        "prompts are a pure function of the RL step (StepBatchSampler starts at the checkpoint's step): "
        "resume is exact, tests/e2e/test_reliability.py",
    ),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "inside Lightning 2.6 under torch 2.13"),
)


def quiet_known_noise() -> None:
    """Silence the warnings in KNOWN_NOISE and Lightning's start-up notes ("GPU available: False",
    tips, "`max_epochs=1` reached": one epoch is the whole run here); real warnings stay."""
    for pattern, _why in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
