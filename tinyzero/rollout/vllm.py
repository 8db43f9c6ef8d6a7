"""A rollout engine on vLLM (written against vLLM 0.33): one in-process engine per rank,
sharing the GPU with training and sleeping while the policy and critic update.

`distributed_executor_backend="external_launcher"` makes each training process its own vLLM
engine (vLLM reuses the process group Lightning or torchrun set up). With vLLM's own
data-parallel size left at 1, consecutive groups of `tensor_parallel_size` ranks are
independent engines (vLLM's "ExternalDP", as veRL uses it): each generates its own prompts,
no lockstep between groups. The engine is built before the trainer's models so vLLM profiles an empty GPU, then
sleeps: `gpu_memory_utilization` is the share of the GPU it takes back on each wake-up.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch

from tinyzero.distributed import share_prompts
from tinyzero.rng import global_rng_state, set_global_rng_state
from tinyzero.rollout.base import SEED_BLOCK_BITS, Rollouts, SamplingParams, check_tags
from tinyzero.rollout.weights import missing_weights

log = logging.getLogger(__name__)

SLEEP_LEVELS = (1, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def preserved_rng():
    """Python's, NumPy's and torch's global generators as they were before the block."""
    state = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(state)


@contextmanager
def preserved_torch_settings():
    """torch's float32 matmul precision and CPU thread count as they were before the block:
    building vLLM's worker sets both for the whole process ("highest"; 1 thread unless OMP_NUM_THREADS)."""
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)


class VLLMEngine:
    """vLLM's `LLM` in sleep mode behind the rollout protocol.

    Sleep level 1 keeps a CPU copy of the weights; level 2 drops them, so every parameter of
    the engine's model must be loaded before each generation: `load_weights` checks that it was.
    """

    def __init__(
        self,
        path: str,
        eos_token_id: int,
        pad_token_id: int,
        device: str | torch.device = "cuda",
        dtype: str = "bfloat16",
        rank: int = 0,
        world_size: int = 1,
        gpu_memory_utilization: float = 0.4,
        enforce_eager: bool = False,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        sleep_level: int = 1,
        seed: int = 0,
    ):
        from vllm import LLM

        if sleep_level not in SLEEP_LEVELS:
            allowed = list(SLEEP_LEVELS)
            raise ValueError(f"rollout.engine.vllm.sleep_level={sleep_level!r} is not allowed; choose one of {allowed}")
        if world_size % tensor_parallel_size:
            raise ValueError(
                f"rollout.engine.vllm.tensor_parallel_size={tensor_parallel_size} "
                f"must divide the {world_size} training ranks"
            )
        self.device = torch.device(device)
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.sleep_level = sleep_level
        # external_launcher reads the torchrun variables; Lightning's own launcher sets only some, and
        # a one-GPU run has no process group for vLLM to join, so it makes one (env://)
        os.environ.setdefault("RANK", str(rank))
        index = self.device.index or 0
        local_rank = int(os.environ.setdefault("LOCAL_RANK", str(index)))
        if local_rank != index:  # external_launcher builds the engine on cuda:LOCAL_RANK
            raise ValueError(
                f"vLLM would put this rank's engine on cuda:{local_rank} (LOCAL_RANK={local_rank}), "
                f"but the rank trains on {self.device}: choose the GPUs with CUDA_VISIBLE_DEVICES "
                "and give trainer.devices as a count, not a list of indices"
            )
        if not torch.distributed.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        # vLLM re-seeds the global generators and sets torch's matmul precision and threads while it builds
        with preserved_rng(), preserved_torch_settings():
            self.llm = LLM(
                model=path,
                dtype=dtype,
                seed=seed,
                skip_tokenizer_init=True,  # token ids in, token ids out
                generation_config="vllm",  # stop on our EOS only, not generation_config.json's list
                enable_sleep_mode=True,
                sleep_mode_offload_cudagraph=True,  # CUDA graphs' memory goes to CPU while asleep too
                distributed_executor_backend="external_launcher",
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                max_num_seqs=max_num_seqs,
                max_model_len=max_model_len,
            )
        # a tensor-parallel group (consecutive ranks, vLLM's layout) generates one shared batch
        self.group = None
        if tensor_parallel_size > 1:
            import torch.distributed as dist

            starts = range(0, world_size, tensor_parallel_size)
            groups = [dist.new_group(list(range(s, s + tensor_parallel_size)), backend="gloo") for s in starts]
            self.group = groups[rank // tensor_parallel_size]
        self.awake = set(check_tags(None))
        self.sleep()

    def sleep(self) -> None:
        if self.awake:
            self.llm.sleep(level=self.sleep_level)
        self.awake.clear()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        tags = [tag for tag in check_tags(tags) if tag not in self.awake]
        if tags:
            self.llm.wake_up(tags=tags)
        self.awake.update(tags)

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream (Hugging Face name, tensor) pairs into the engine's model one at a time,
        cast to the rollout dtype on the engine's device; vLLM maps q/k/v and gate/up onto its fused layers."""
        if "weights" not in self.awake:
            raise RuntimeError("load_weights called while the engine's weights sleep: call wake_up(['weights']) first")

        def load(model) -> list[str]:
            """The model's parameters (vLLM's names; a tied head is the embedding) this push left out.
            A fused parameter (qkv_proj, gate_up_proj) counts as loaded once any of its parts is."""
            dtype = next(model.parameters()).dtype
            stream = ((name, tensor.to(self.device, dtype, non_blocking=True)) for name, tensor in named_tensors)
            loaded = model.load_weights(stream)
            return missing_weights(loaded, {name for name, _ in model.named_parameters()})

        (missing,) = self.llm.apply_model(load)  # external_launcher: one worker per process
        if self.sleep_level == 2 and missing:
            raise RuntimeError(
                f"rollout.engine.vllm.sleep_level=2 discards the engine's weights, but this push left out {missing[:5]}"
                f"{' …' if len(missing) > 5 else ''}: push every weight or use sleep_level=1"
            )

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> Rollouts:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        if self.awake != {"weights", "kv_cache"}:
            raise RuntimeError(f"generate needs weights and kv_cache awake, have {sorted(self.awake)}")
        own = len(prompt_token_ids)
        prompt_token_ids, seed, start = list(prompt_token_ids), sampling.seed, 0
        if self.group is not None:
            prompt_token_ids, seed, start = share_prompts(prompt_token_ids, seed, self.group)
        if len(prompt_token_ids) * sampling.n > 2**SEED_BLOCK_BITS:
            raise ValueError(
                f"{len(prompt_token_ids)} prompts × rollout.n={sampling.n} exceed the 2**{SEED_BLOCK_BITS} "
                "sampling seeds of an engine's step"
            )
        greedy = sampling.temperature == 0
        # one seed per prompt, within this step's block (vLLM gives the n samples of a prompt seed, seed+1, …)
        params = [
            VLLMSamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed + i * sampling.n,
                stop_token_ids=[self.eos_token_id],
                detokenize=False,
            )
            for i in range(len(prompt_token_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        with preserved_rng():  # the trainer's generators are left as they were
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rollouts = Rollouts(prompt_index=[], response_ids=[])
        for i, output in enumerate(outputs[start : start + own]):
            for completion in output.outputs:
                rollouts.prompt_index.append(i)
                rollouts.response_ids.append(list(completion.token_ids))
        return rollouts
