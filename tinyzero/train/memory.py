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
from dataclasses import dataclass, field
from functools import partial

import torch
from omegaconf import DictConfig

from tinyzero.kernels.backend import auto_chunk_tokens, resolve_backend

log = logging.getLogger(__name__)
GIB = 2**30


def dtype_bytes(name: str) -> int:
    from tinyzero.models.loading import resolve_dtype

    return torch.empty((), dtype=resolve_dtype(name)).element_size()


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a Qwen2-style config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_word_embeddings: bool

    @classmethod
    def of(cls, config) -> Shape:
        return cls(
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.num_key_value_heads,
            bool(config.tie_word_embeddings),
        )

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        h, kv, inter = self.hidden_size, self.kv_dim, self.intermediate_size
        attention = h * h + h + 2 * (h * kv + kv) + h * h  # q, k, v with biases; o without
        return attention + 3 * h * inter + 2 * h  # gate, up, down; two RMSNorms

    def params(self, head: str) -> int:
        """All parameters with the LM head (`"lm"`, absent when tied) or a scalar value head (`"value"`)."""
        body = self.vocab_size * self.hidden_size + self.num_layers * self.layer_params + self.hidden_size
        if head == "value":
            return body + self.hidden_size + 1
        return body + (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    def kv_cache_bytes_per_token(self, dtype: str) -> int:
        return 2 * self.num_layers * self.kv_dim * dtype_bytes(dtype)


@dataclass
class MemoryPlan:
    """Bytes per GPU, by component, for each phase."""

    train: dict[str, float] = field(default_factory=dict)
    generate: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def train_total(self) -> float:
        return sum(self.train.values())

    @property
    def generate_total(self) -> float:
        return sum(self.generate.values())

    @property
    def peak(self) -> float:
        return max(self.train_total, self.generate_total)

    def fits(self, gpu_bytes: float) -> bool:
        return self.peak <= gpu_bytes

    def figures(self, gpu_bytes: float) -> str:
        """Both phases in one line, and whether they fit in `gpu_bytes`."""
        verdict = "fits" if self.fits(gpu_bytes) else f"{(self.peak - gpu_bytes) / GIB:.1f} GiB over"
        return f"train {self.train_total / GIB:.1f} GiB, generate {self.generate_total / GIB:.1f} GiB: {verdict}"

    def table(self) -> str:
        lines = []
        for phase, parts, total in (
            ("train", self.train, self.train_total),
            ("generate", self.generate, self.generate_total),
        ):
            lines.append(f"{phase} phase: {total / GIB:.2f} GiB")
            lines += [f"  {name:<38} {value / GIB:8.2f} GiB" for name, value in parts.items() if value]
        return "\n".join(lines + self.notes)

    def check(self, gpu_bytes: float) -> list[str]:
        """One warning per phase that does not fit in `gpu_bytes`."""
        return [
            f"the {phase} phase needs about {total / GIB:.1f} GiB per GPU, "
            f"more than the {gpu_bytes / GIB:.1f} GiB there"
            for phase, total in (("train", self.train_total), ("generate", self.generate_total))
            if total > gpu_bytes
        ]


# Calibrated on an H200 (torch 2.11, a Qwen2.5-1.5B-shaped PPO step; README, "Memory plan"):
# outside PyTorch's allocator 0.86 GiB was in use (context, kernels, libraries); the train phase
# reserved 4.1 GiB (7.8 %) beyond its 51.9 GiB allocated peak.
CUDA_CONTEXT_BYTES = 1.0 * GIB
ALLOCATOR_SLACK = 0.10  # reserved beyond allocated (block rounding, fragmentation), of the rest
# float32 [tokens, vocab] temporaries of the eager log-prob + entropy (`logprobs_and_entropy_reference`):
# scaled logits, softmax, their product and the gradients of each, alive together at the peak
EAGER_FLOAT32_COPIES = {"train": 5, "no_grad": 3}


def head_bytes(
    tokens: int, shape: Shape, compute: int, backend: str, fused: bool, chunk_tokens: int, training: bool
) -> tuple[float, float]:
    """(logits, the rest) that the log-prob head adds over `tokens` response positions. Fused: one
    chunk of logits (float32 z and p too on the torch path), and when training the float32
    weight-gradient accumulator and its cast. Unfused: the head's logits and the copy its
    reshape makes, then the Triton kernel's gradient or the eager float32 temporaries."""
    vocab, hidden = shape.vocab_size, shape.hidden_size
    if fused:
        chunk = min(chunk_tokens, tokens) * vocab
        logits = chunk * compute + (0 if backend == "triton" else 2 * chunk * 4)
        return logits, (vocab * hidden * (4 + compute) if training else 0)
    logits = tokens * vocab * compute
    if backend == "triton":
        return logits * (4 if training else 2), 0  # + the gradient, and the zero-filled gradient of the slice
    return 2 * logits + EAGER_FLOAT32_COPIES["train" if training else "no_grad"] * tokens * vocab * 4, 0


def estimate_memory(
    shape: Shape,
    *,
    world_size: int,
    prompt_len: int,
    response_len: int,
    micro_batch: int,
    log_prob_micro_batch: int,
    use_critic: bool,
    model_dtype: str,
    param_dtype: str | None,
    rollout_dtype: str,
    gradient_checkpointing: bool,
    offload_reference: bool,
    offload_optimizer: bool,
    kernels_backend: str,
    fused_head: bool,
    chunk_tokens: int,
    engine: str,
    engine_on_gpu: bool,
    gpu_bytes: float,
    gpu_memory_utilization: float,
    tensor_parallel_size: int,
    max_num_seqs: int,
) -> MemoryPlan:
    """Train phase: what stays resident (shards of params and AdamW moments, the reference, the
    engine's weights on CPU) plus the largest of the transients that never coexist: a policy
    micro-batch's backward, a critic's, an optimizer step, a log-prob pass. Generate phase: the
    resident training state plus the engine's share."""
    plan = MemoryPlan()
    master, compute = dtype_bytes(model_dtype), dtype_bytes(param_dtype or model_dtype)
    seq = prompt_len + response_len
    h, inter = shape.hidden_size, shape.intermediate_size
    models = [("policy", shape.params("lm"))] + ([("critic", shape.params("value"))] if use_critic else [])
    on_gpu = 0 if offload_optimizer else 1
    for name, params in models:
        plan.train[f"{name} params (sharded)"] = on_gpu * params * master / world_size
        plan.train[f"{name} AdamW moments (sharded)"] = on_gpu * 2 * params * master / world_size
    reference_on_gpu = 0 if offload_reference else 1
    plan.train["reference params (sharded)"] = reference_on_gpu * shape.params("lm") * master / world_size
    root = shape.params("lm") - shape.num_layers * shape.layer_params
    if world_size > 1:
        # FSDP2 gathers the root (embeddings, head) for the whole pass and a layer (plus the next, prefetched)
        plan.train["gathered root + 2 layers"] = (root + 2 * shape.layer_params) * compute
    engine_weights = shape.params("lm") * dtype_bytes(rollout_dtype) / tensor_parallel_size
    if not engine_on_gpu:
        plan.train["engine weights (asleep, same memory)"] = engine_weights
        plan.notes.append("the engine shares the trainer's memory (CPU): its weights stay resident while asleep")
    resident = dict(plan.train)

    tokens = micro_batch * seq
    # saved per layer: norm outputs, q, k, v, attention and o outputs, residuals (h or kv wide), gate, up,
    # act(gate), act·up (intermediate wide)
    per_layer = tokens * (7 * h + 2 * shape.kv_dim + 4 * inter) * compute
    activations = (
        shape.num_layers * tokens * h * compute + per_layer if gradient_checkpointing else shape.num_layers * per_layer
    )
    # one GPU, float32 master weights under bf16 autocast: the bf16 copies of the weights a
    # backward needs (the head's for the pass, a layer's at a time when checkpointed)
    autocast_copies = 0.0
    if world_size == 1 and compute < master:
        layers = 1 if gradient_checkpointing else shape.num_layers
        autocast_copies = (shape.vocab_size * h + layers * shape.layer_params) * compute
    head = partial(head_bytes, shape=shape, compute=compute, backend=kernels_backend, fused=fused_head)
    logits, head_rest = head(micro_batch * response_len, chunk_tokens=chunk_tokens, training=True)
    policy_grads = on_gpu * shape.params("lm") * master / world_size
    transients = {
        "policy micro-batch backward (grads, activations, head, bf16 weights)": policy_grads
        + activations
        + logits
        + head_rest
        + autocast_copies,
        "optimizer step (grads, AdamW's temporaries)": 2 * on_gpu * max(p for _, p in models) * master / world_size,
        "log-prob pass (no grad)": log_prob_micro_batch * seq * h * compute * 2
        + sum(head(log_prob_micro_batch * response_len, chunk_tokens=chunk_tokens, training=False)),
    }
    if fused_head:
        tokens_in_chunk = min(chunk_tokens, micro_batch * response_len)
        how = f"fused lm_head: one chunk of {tokens_in_chunk} tokens; weight-gradient accumulator {head_rest / GIB:.2f}"
    else:
        how = f"{micro_batch} × {response_len} response tokens, {kernels_backend} path"
    plan.notes.append(f"logits of a policy micro-batch: {logits / GIB:.2f} GiB ({how})")
    if use_critic:
        transients["critic micro-batch backward (grads, activations)"] = (
            on_gpu * shape.params("value") * master / world_size + activations + autocast_copies
        )
    largest = max(transients, key=transients.get)
    plan.train[f"largest transient: {largest}"] = transients[largest]
    plan.train["allocator slack"] = ALLOCATOR_SLACK * sum(plan.train.values())
    plan.train["CUDA context and libraries"] = CUDA_CONTEXT_BYTES if engine_on_gpu else 0
    plan.notes.append(
        "train transients: "
        + ", ".join(f"{name.split(' (')[0]} {value / GIB:.2f}" for name, value in transients.items())
    )

    # generating: training state stays resident, gradients do not (freed after each step)
    # the CPU engine's weights are counted once, below
    plan.generate.update({name: value for name, value in resident.items() if not name.startswith("engine weights")})
    if engine == "vllm":
        budget = gpu_memory_utilization * gpu_bytes
        plan.generate["vLLM (gpu_memory_utilization)"] = budget
        kv_tokens = (budget - engine_weights) / shape.kv_cache_bytes_per_token(rollout_dtype) * tensor_parallel_size
        plan.notes.append(
            f"vLLM KV cache: room for about {max(kv_tokens, 0):,.0f} tokens per engine "
            f"({max(kv_tokens, 0) / seq:,.0f} sequences of {seq}; max_num_seqs={max_num_seqs}); with "
            "enforce_eager=false its CUDA graphs take part of that share (offloaded while asleep)"
        )
    else:
        plan.generate["engine weights"] = engine_weights
        plan.generate["KV cache (max_num_seqs sequences)"] = (
            max_num_seqs * seq * shape.kv_cache_bytes_per_token(rollout_dtype)
        )
    # vLLM's share is a budget its own allocator keeps to: no slack on it
    plan.generate["allocator slack"] = ALLOCATOR_SLACK * sum(
        value for name, value in plan.generate.items() if not name.startswith("vLLM")
    )
    plan.generate["CUDA context and libraries"] = plan.train["CUDA context and libraries"]
    return plan


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
    """`fsdp.<key>` as the run applies it: FSDP2's CPU offload, so with a device mesh on CUDA only.
    A one-GPU recipe (trainer=gpu) builds no mesh and ignores it today (issue 23)."""
    return bool(cfg.fsdp[key]) and shards_with_fsdp2(cfg) and on_gpu(cfg)


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
    param_dtype = cfg.fsdp.param_dtype if ranks(cfg) > 1 else ("bfloat16" if cfg.model.autocast_bf16 else None)
    return estimate_memory(
        shape,
        world_size=ranks(cfg),
        prompt_len=cfg.data.max_prompt_length,
        response_len=cfg.rollout.max_new_tokens,
        micro_batch=policy_micro_batch(cfg),
        log_prob_micro_batch=min(cfg.algorithm.log_prob_micro_batch_size, responses_per_rank(cfg)),
        use_critic=cfg.algorithm.adv_estimator == "gae",
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
    )


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
    for warning in plan.check(gpu_bytes):
        log.warning("%s: expect out-of-memory", warning)
    if not plan.fits(gpu_bytes):
        from tinyzero.train.memory_advice import advice, run_composer  # it plans with this module

        log.warning("\n".join(advice(cfg, plan, gpu_bytes, engine, run_composer())))
    return plan
