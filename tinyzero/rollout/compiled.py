"""A rollout engine that decodes over a static KV cache, each step a replayed CUDA graph.

transformers' `generate` pays Python and kernel-launch cost for every token: on an H200 a
Qwen2.5-1.5B-shaped model decoded 16 × 1024 tokens at 487 tokens/s, about 33 ms a step for
under 1 ms of weight reads. Here the prompts are prefilled once (the `n` samples of a prompt
share it), then each decoding step is one graph replay per batch-size bucket plus sampling.
On CPU the same loop runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from tinyzero.rollout.base import SamplingParams, check_tags
from tinyzero.rollout.hf import HFEngine
from tinyzero.rollout.static_decoder import StaticDecoder, check_decodable

log = logging.getLogger(__name__)

# decoding steps between checks that every sequence has ended: on CUDA the check is a host sync;
# elsewhere it costs nothing, and the engine checks after every step (a step past the last EOS is waste)
CUDA_DONE_CHECK_EVERY = 8


def batch_bucket(batch: int, max_batch_size: int) -> int:
    """The graph a batch of `batch` sequences replays: the next power of two (at least 8), at most
    `max_batch_size`, so a handful of graphs serve every batch size."""
    return min(max(8, 1 << (batch - 1).bit_length()), max_batch_size)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next tokens `[B]` from `logits [B, vocab]`: argmax at temperature 0, else a draw from the
    softmax at `temperature` restricted to the nucleus (the most probable tokens whose mass first
    reaches `top_p`), from torch's current generator.

    The draw inverts the cumulative distribution at one uniform number per row: `multinomial`
    draws an exponential per vocabulary entry on the CPU (a ninth of a tiny model's decoding step);
    a token of zero probability repeats the sum before it and is never the first to exceed it."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        beyond_nucleus = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(beyond_nucleus, 0))
    cumulative = probs.cumsum(-1)
    draws = torch.rand(len(probs), 1, device=probs.device, dtype=cumulative.dtype) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, draws, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


class CompiledEngine(HFEngine):
    """The transformers engine's weights, sleep and weight pushes (copied in place, so captured
    graphs stay valid) with its own decoding loop. With CUDA graphs the cache, `max_batch_size`
    sequences × `max_model_len` tokens, exists while `kv_cache` is awake; graphs are captured on
    first use of each bucket after a wake-up and dropped at `sleep`. Decoding eagerly (on CPU),
    each chunk gets a cache of its own sequences × its prompt width and `max_new_tokens`, as
    transformers' cache holds what is used."""

    def __init__(self, *args, max_model_len: int = 2048, cuda_graphs: bool = True, keep_graphs: bool = False, **kwargs):
        """`args` and `kwargs` as `HFEngine`'s (its `max_batch_size` is the cache's rows). `keep_graphs`
        (with CUDA graphs): the weights, the cache and the captured graphs stay on the GPU while asleep, so
        no step captures again (each capture synchronises and empties the allocator's cache); the memory
        plan then counts them in the train phase too."""
        self.max_model_len = max_model_len
        self.decoder: StaticDecoder | None = None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_pool = None
        super().__init__(*args, **kwargs)
        check_decodable(self.model.config)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.keep_graphs = keep_graphs and self.cuda_graphs

    def sleep(self) -> None:
        if self.decoder is not None and self.keep_graphs:  # weights and cache stay where the graphs read them
            self.awake.clear()
            return
        self.decoder, self.graphs, self.graph_pool = None, {}, None
        super().sleep()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        tags = check_tags(tags)
        super().wake_up(tags)
        if "kv_cache" in tags and self.decoder is None and self.cuda_graphs:
            self.decoder = StaticDecoder(self.model, self.max_batch_size, self.max_model_len, self.device)

    def _step(self, batch: int, used_slots: int) -> torch.Tensor:
        """One decoding step of the first `batch` rows, whose tokens fill cache slots `0 … used_slots − 1`:
        logits `[batch, vocab]`. Eagerly it attends over those slots only; a graph over all of them."""
        if not self.cuda_graphs:
            return self.decoder.step(batch, used_slots)
        bucket = batch_bucket(batch, self.max_batch_size)
        if bucket not in self.graphs:
            # warm up on a side stream (what capture requires), then record the step once
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # rewrites the current slot with what the replay writes
                    self.decoder.step(bucket)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.graph_pool):
                logits = self.decoder.step(bucket)
            self.graph_pool = graph.pool()
            self.graphs[bucket] = (graph, logits)
            log.info("captured the decoding step for %d sequences as a CUDA graph", bucket)
        graph, logits = self.graphs[bucket]
        graph.replay()
        return logits[:batch]

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        if width + sampling.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"{width} prompt tokens + rollout.max_new_tokens={sampling.max_new_tokens} exceed the compiled "
                f"engine's cache of max_model_len={self.max_model_len} tokens"
            )
        input_ids, valid = self._left_padded(prompts)  # every prompt ends at slot width − 1
        batch = len(prompts) * sampling.n
        if not self.cuda_graphs:
            self.decoder = StaticDecoder(self.model, batch, width + sampling.max_new_tokens, self.device)
        logits = self.decoder.prefill(input_ids, valid, copies=sampling.n)
        logits = logits.repeat_interleave(sampling.n, 0)
        responses = torch.full((batch, sampling.max_new_tokens), self.pad_token_id, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        check_every = CUDA_DONE_CHECK_EVERY if self.device.type == "cuda" else 1
        for t in range(sampling.max_new_tokens):
            tokens = sample_tokens(logits, sampling.temperature, sampling.top_p).masked_fill(done, self.pad_token_id)
            responses[:, t] = tokens
            done |= tokens == self.eos_token_id
            if t + 1 == sampling.max_new_tokens or ((t + 1) % check_every == 0 and bool(done.all())):
                break
            self.decoder.step_tokens[:batch, 0] = tokens
            self.decoder.step_slot.fill_(width + t)
            logits = self._step(batch, used_slots=width + t + 1)
        return self._until_eos(responses)
