"""A rollout engine on transformers' `generate`: runs anywhere, CPU included."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from tinyzero.models.loading import load_policy
from tinyzero.rollout.base import Rollouts, SamplingParams, check_tags, generator_seed

log = logging.getLogger(__name__)


class HFEngine:
    """Keeps its own copy of the policy; sleeping moves it off the compute device.

    `max_batch_size` bounds the sequences generated at once (prompts × n). `pin_memory` (on CUDA): the
    sleeping weights go to pinned host buffers allocated once and reused at every sleep, copied at the
    link's full speed; without it each sleep allocates pageable host memory that the copy is staged through.
    """

    def __init__(
        self,
        path: str,
        eos_token_id: int,
        pad_token_id: int,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        max_batch_size: int = 256,
        pin_memory: bool = True,
    ):
        self.device = torch.device(device)
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self.host: dict[str, torch.Tensor] = {}  # name -> the pinned buffer a sleeping weight lives in
        self.model = load_policy(path, dtype=dtype, attn_implementation=attn_implementation).eval()
        self.model.requires_grad_(False)
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.max_batch_size = max_batch_size
        self.params = dict(self.model.named_parameters())
        self.awake: set[str] = set()
        self.sleep()

    def sleep(self) -> None:
        if self.pin_memory:
            self._to_pinned_host()
        elif self.device.type != "cpu":
            self.model.to("cpu")
        self.awake.clear()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        tags = check_tags(tags)
        if "weights" in tags and "weights" not in self.awake:
            for param in self.params.values():
                param.data = param.data.to(self.device, non_blocking=True)
            self.model.to(self.device)  # the buffers (rotary frequencies), the first time
        self.awake.update(tags)

    def _to_pinned_host(self) -> None:
        """Each weight into its pinned host buffer (allocated at the first sleep), then the device copies freed."""
        for name, param in self.params.items():
            if name not in self.host:
                self.host[name] = torch.empty(param.shape, dtype=param.dtype, pin_memory=True)
            self.host[name].copy_(param.data, non_blocking=True)
        torch.cuda.synchronize(self.device)
        for name, param in self.params.items():
            param.data = self.host[name]

    def reset_prefix_cache(self) -> None:
        """transformers keeps no cache between `generate` calls: nothing to reset."""

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if "weights" not in self.awake:
            raise RuntimeError("load_weights called while the engine's weights sleep: call wake_up(['weights']) first")
        for name, tensor in named_tensors:
            if name not in self.params:
                raise KeyError(f"engine has no parameter {name!r}")
            self.params[name].copy_(tensor)

    @torch.no_grad()
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> Rollouts:
        if self.awake != {"weights", "kv_cache"}:
            raise RuntimeError(f"generate needs weights and kv_cache awake, have {sorted(self.awake)}")
        prompts_per_chunk = max(1, self.max_batch_size // sampling.n)
        rollouts = Rollouts(prompt_index=[], response_ids=[])
        # A private RNG stream: sampling is seeded and leaves the trainer's RNG untouched.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(generator_seed(sampling.seed))
            for start in range(0, len(prompt_token_ids), prompts_per_chunk):
                chunk = prompt_token_ids[start : start + prompts_per_chunk]
                for i, response in enumerate(self._generate_chunk(chunk, sampling)):
                    rollouts.prompt_index.append(start + i // sampling.n)
                    rollouts.response_ids.append(response)
        return rollouts

    def _left_padded(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids [P, width]` and `valid [P, width]` (not padding) on the engine's device, padded
        on the left so every prompt ends at column `width − 1`."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        valid = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[row, width - len(prompt) :] = True
        return input_ids.to(self.device), valid.to(self.device)

    def _until_eos(self, responses: torch.Tensor) -> list[list[int]]:
        """Each row of `responses [B, T]` up to and including its first EOS (all of it without one)."""
        out = []
        for row in responses.tolist():
            end = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            out.append(row[:end])
        return out

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[int]]:
        input_ids, valid = self._left_padded(prompts)
        greedy = sampling.temperature == 0
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=valid.long(),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            num_return_sequences=sampling.n,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        return self._until_eos(output[:, input_ids.shape[1] :])
