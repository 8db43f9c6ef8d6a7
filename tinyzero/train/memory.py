"""A per-GPU memory plan for a recipe: what the train phase and the generate phase hold.

Estimates from the model's shape alone (no GPU needed), component by component, so a recipe
that cannot fit is caught at start-up and a new one can be sized before it is launched.
Train phase: FSDP2 shards (params, grads, AdamW's two moments) of policy and critic, the
reference's shards, the gathered layers, and one micro-batch's activations and logits.
Generate phase: what training keeps resident (no gradients) plus the engine's share.
What to change when a phase does not fit: `tinyzero.train.memory_advice`.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig

from tinyzero.kernels.backend import auto_chunk_tokens, resolve_backend
from tinyzero.models.lora import lora_enabled
from tinyzero.train.memory_estimate import GIB, MemoryPlan, Shape, dtype_bytes, estimate_memory

log = logging.getLogger(__name__)


def model_shape(model_cfg) -> Shape:
    """From `model.architecture` when the recipe spells it out (planning without a download),
    else from the checkpoint's config.json."""
    from transformers import AutoConfig, Qwen2Config

    if model_cfg.get("architecture"):
        return Shape.of(Qwen2Config(**model_cfg.architecture))
    return Shape.of(AutoConfig.from_pretrained(model_cfg.path))


def chunk_tokens(setting: int | str, vocab: int, dtype: str) -> int:
    """`kernels.chunk_tokens` in tokens: `auto` as the fused head resolves it."""
    from tinyzero.models.loading import resolve_dtype

    return auto_chunk_tokens(vocab, resolve_dtype(dtype)) if setting == "auto" else int(setting)


def responses_per_rank(cfg) -> int:
    return cfg.data.train_batch_size * cfg.rollout.n // ranks(cfg)


def ranks(cfg) -> int:
    return int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)


def on_gpu(cfg) -> bool:
    return cfg.trainer.accelerator in ("gpu", "cuda")


def shards_with_fsdp2(cfg) -> bool:
    """Whether the trainer builds a device mesh (trainer=fsdp / fsdp_cpu: Lightning's
    ModelParallelStrategy), the only case where the models are sharded and `fsdp.*` is read."""
    strategy = cfg.trainer.strategy
    return isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("ModelParallelStrategy")


def offloads(cfg, key: str) -> bool:
    """`fsdp.<key>` as the run applies it: FSDP2's CPU offload, so with a device mesh (trainer=fsdp, one GPU
    or more) on CUDA only; `build.validate` refuses it on a trainer without one."""
    return bool(cfg.fsdp[key]) and shards_with_fsdp2(cfg) and on_gpu(cfg)


def uses_critic(cfg) -> bool:
    """Whether the recipe's advantage estimator trains a critic (the estimators' own registry says)."""
    from tinyzero.ppo.advantages import ADVANTAGE_ESTIMATORS

    return ADVANTAGE_ESTIMATORS[cfg.algorithm.adv_estimator].needs_critic


def lora_params(cfg, shape: Shape) -> int:
    """Parameters in each model's LoRA adapters (`model.lora`); 0 when the run trains every weight."""
    lora = cfg.model.get("lora")
    return shape.lora_params(lora.rank, lora.target_modules) if lora_enabled(lora) else 0


def checkpoint_bytes_per_rank(cfg) -> float:
    """What the most loaded rank writes per checkpoint, computed from the shapes (not measured): the
    policy's and, with a critic, the critic's weights and AdamW's two moments in `model.dtype`; split over
    the ranks when sharded (`trainer.strategy.save_distributed_checkpoint`), else all on rank 0. The
    frozen reference is never saved; with LoRA neither is the frozen base: the float32 adapters (and the
    critic's value head) and their moments."""
    shape = model_shape(cfg.model)
    heads = ["lm"] + (["value"] if uses_critic(cfg) else [])
    adapters = lora_params(cfg, shape)
    if adapters:
        total = sum(3 * (adapters + (shape.hidden_size + 1 if head == "value" else 0)) * 4 for head in heads)
    else:
        total = sum(3 * shape.params(head) * dtype_bytes(cfg.model.dtype) for head in heads)
    sharded = shards_with_fsdp2(cfg) and cfg.trainer.strategy.get("save_distributed_checkpoint", False)
    return total / ranks(cfg) if sharded else total


def policy_micro_batch(cfg) -> int:
    """Rows in a policy/critic micro-batch: a token budget holds about budget / (prompt + response)
    full-length rows; never more than a mini-batch's rows on a rank (module.mini_batch_rows)."""
    algorithm, seq = cfg.algorithm, cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    budget = algorithm.ppo_max_token_len_per_micro_batch
    rows = max(1, budget // seq) if budget else algorithm.ppo_micro_batch_size
    mini_batch_rows = max(1, algorithm.ppo_mini_batch_size // ranks(cfg)) * cfg.rollout.n
    return min(rows, mini_batch_rows, responses_per_rank(cfg))


def plan_for(cfg, gpu_bytes: float, engine: str) -> MemoryPlan:
    """The memory plan of a composed training config, per GPU of `gpu_bytes`: a pure function of
    the config, so a change is planned by planning the config with that change."""
    shape = model_shape(cfg.model)
    vllm = cfg.rollout.engine.vllm
    # the compute dtype: FSDP2's param_dtype when sharded, else bf16 under autocast
    sharded = shards_with_fsdp2(cfg)
    param_dtype = cfg.fsdp.param_dtype if sharded else ("bfloat16" if cfg.model.autocast_bf16 else None)
    return estimate_memory(
        shape,
        world_size=ranks(cfg),
        prompt_len=cfg.data.max_prompt_length,
        response_len=cfg.rollout.max_new_tokens,
        micro_batch=policy_micro_batch(cfg),
        log_prob_micro_batch=min(cfg.algorithm.log_prob_micro_batch_size, responses_per_rank(cfg)),
        use_critic=uses_critic(cfg),
        model_dtype=cfg.model.dtype,
        param_dtype=param_dtype,
        rollout_dtype=cfg.rollout.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        offload_reference=offloads(cfg, "offload_reference"),
        offload_optimizer=offloads(cfg, "offload_optimizer"),
        kernels_backend=resolve_backend(cfg.kernels.backend, "cuda" if on_gpu(cfg) else "cpu")[0],
        fused_head=cfg.kernels.fused_lm_head,
        chunk_tokens=chunk_tokens(cfg.kernels.chunk_tokens, shape.vocab_size, param_dtype or cfg.model.dtype),
        engine=engine,
        engine_on_gpu=on_gpu(cfg),
        gpu_bytes=gpu_bytes,
        gpu_memory_utilization=vllm.gpu_memory_utilization,
        tensor_parallel_size=vllm.tensor_parallel_size if engine == "vllm" else 1,
        # the compiled engine allocates its whole cache; transformers' grows with the batch
        max_num_seqs={
            "vllm": vllm.max_num_seqs,
            "compiled": cfg.rollout.engine.compiled.max_batch_size,
            "hf": min(cfg.rollout.engine.hf.max_batch_size, responses_per_rank(cfg)),
        }[engine],
        engine_stays_awake=engine == "compiled" and cfg.rollout.engine.compiled.keep_graphs,
        sharded=sharded,
        lora_params=lora_params(cfg, shape),
        ranks_per_node=int(cfg.trainer.devices),
        engine_sleeps_on_host=not (engine == "vllm" and vllm.sleep_level == 2),  # level 2 drops the weights
    )


def host_bytes(cfg) -> float:
    """`host_memory_gib`, or this machine's physical memory."""
    if cfg.get("host_memory_gib"):
        return cfg.host_memory_gib * GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def reset_phase_peak() -> None:
    torch.cuda.reset_peak_memory_stats()


def phase_peak(phase: str) -> dict[str, float]:
    """The GPU's peak since `reset_phase_peak`, in GiB: `memory/<phase>_peak_gib` as nvidia-smi
    counts it (PyTorch's peak reserved memory plus what lies outside PyTorch's allocator now: CUDA
    context, libraries, NCCL, vLLM's pool), and the parts: tensors' peak and the outside share."""
    free, total = torch.cuda.mem_get_info()
    outside = max(total - free - torch.cuda.memory_reserved(), 0)
    return {
        f"memory/{phase}_peak_gib": (torch.cuda.max_memory_reserved() + outside) / GIB,
        f"memory/{phase}_peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        f"memory/{phase}_outside_torch_gib": outside / GIB,
    }


def check_at_startup(cfg, engine: str) -> MemoryPlan:
    """Log the plan for this GPU (or `gpu_memory_gib`); for a phase that will not fit, warn and say
    what to change, as `scripts/memory_plan.py` does."""
    gpu_bytes = cfg.gpu_memory_gib * GIB if cfg.gpu_memory_gib else torch.cuda.get_device_properties(0).total_memory
    plan = plan_for(cfg, gpu_bytes, engine)
    log.info("memory plan per GPU (%.0f GiB):\n%s", gpu_bytes / GIB, plan.table())
    for warning in plan.check(gpu_bytes, host_bytes(cfg)):
        log.warning("%s: expect out-of-memory", warning)
    if not plan.fits(gpu_bytes):
        from tinyzero.train.memory_advice import advice, run_composer  # it plans with this module

        log.warning("\n".join(advice(cfg, plan, gpu_bytes, engine, run_composer())))
    return plan
