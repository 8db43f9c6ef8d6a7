"""The memory model: bytes per GPU of each component of the train and the generate phase, from a model's shape
and the run's sizes alone (no GPU needed). `tinyzero.train.memory` applies it to a recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

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

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by its name (LoRA's targets)."""
        h, kv, inter = self.hidden_size, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, inter),
            "up_proj": (h, inter),
            "down_proj": (inter, h),
        }

    def lora_params(self, rank: int, targets) -> int:
        """LoRA's A (r × in) and B (out × r) of each target in every layer."""
        shapes = self.linear_shapes()
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            from tinyzero.errors import ConfigError

            raise ConfigError(f"model.lora.target_modules: {unknown} are not linear layers of Qwen2: {list(shapes)}")
        return self.num_layers * sum(rank * (shapes[name][0] + shapes[name][1]) for name in set(targets))


@dataclass
class MemoryPlan:
    """Bytes per GPU, by component, for each phase."""

    train: dict[str, float] = field(default_factory=dict)
    generate: dict[str, float] = field(default_factory=dict)
    host: dict[str, float] = field(default_factory=dict)  # CPU memory per rank beyond the process itself
    notes: list[str] = field(default_factory=list)
    ranks_per_node: int = 1

    @property
    def host_total(self) -> float:
        return sum(self.host.values())

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
        if self.host_total:
            lines.append(f"host memory per rank (pinned, beside the GPU): {self.host_total / GIB:.2f} GiB")
            lines += [f"  {name:<38} {value / GIB:8.2f} GiB" for name, value in self.host.items() if value]
        return "\n".join(lines + self.notes)

    def check(self, gpu_bytes: float, host_bytes: float | None = None) -> list[str]:
        """One warning per phase that does not fit in `gpu_bytes`, and one when what the ranks of a node keep
        in host memory (`host_total` × `ranks_per_node`) exceeds `host_bytes`."""
        warnings = [
            f"the {phase} phase needs about {total / GIB:.1f} GiB per GPU, "
            f"more than the {gpu_bytes / GIB:.1f} GiB there"
            for phase, total in (("train", self.train_total), ("generate", self.generate_total))
            if total > gpu_bytes
        ]
        if host_bytes is not None and self.host_total * self.ranks_per_node > host_bytes:
            warnings.append(
                f"offload and the sleeping engine keep about {self.host_total * self.ranks_per_node / GIB:.1f} GiB "
                f"of host memory ({self.ranks_per_node} ranks), more than the {host_bytes / GIB:.1f} GiB there"
            )
        return warnings


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
    sharded: bool,  # FSDP2's device mesh (trainer=fsdp: a one-GPU mesh too)
    engine_stays_awake: bool = False,
    lora_params: int = 0,
    ranks_per_node: int = 1,
    engine_sleeps_on_host: bool = True,
) -> MemoryPlan:
    """Train phase: what stays resident (shards of params and AdamW moments, the reference, the
    engine's weights on CPU) plus the largest of the transients that never coexist: a policy
    micro-batch's backward, a critic's, an optimizer step, a log-prob pass. Generate phase: the
    resident training state plus the engine's share."""
    plan = MemoryPlan(ranks_per_node=ranks_per_node)
    master, compute = dtype_bytes(model_dtype), dtype_bytes(param_dtype or model_dtype)
    seq = prompt_len + response_len
    h, inter = shape.hidden_size, shape.intermediate_size
    models = [("policy", shape.params("lm"))] + ([("critic", shape.params("value"))] if use_critic else [])
    on_gpu = 0 if offload_optimizer else 1
    # what each model trains: all its weights, or LoRA's float32 adapters (and the critic's value head)
    trained = {"policy": lora_params, "critic": lora_params + h + 1} if lora_params else dict(models)
    trained_bytes = 4 if lora_params else master
    for name, params in models:
        if lora_params:
            plan.train[f"{name} frozen base weights"] = params * master / world_size
            plan.train[f"{name} LoRA weights + AdamW moments"] = 3 * trained[name] * trained_bytes
        else:
            plan.train[f"{name} params (sharded)"] = on_gpu * params * master / world_size
            plan.train[f"{name} AdamW moments (sharded)"] = on_gpu * 2 * params * master / world_size
            # offloaded: the shards, their gradients and both moments, in pinned host memory
            plan.host[f"{name} offloaded shards, grads, AdamW"] = (1 - on_gpu) * 4 * params * master / world_size
    if lora_params:
        plan.notes.append("LoRA: the reference is the policy's base with its adapters disabled: no copy of its own")
    else:
        reference_on_gpu = 0 if offload_reference else 1
        plan.train["reference params (sharded)"] = reference_on_gpu * shape.params("lm") * master / world_size
        plan.host["reference offloaded shards"] = (1 - reference_on_gpu) * shape.params("lm") * master / world_size
    root = shape.params("lm") - shape.num_layers * shape.layer_params
    if sharded:
        # FSDP2 gathers the root (embeddings, head) for the whole pass and a layer (plus the next, prefetched)
        plan.train["gathered root + 2 layers"] = (root + 2 * shape.layer_params) * compute
    engine_weights = shape.params("lm") * dtype_bytes(rollout_dtype) / tensor_parallel_size
    kv_cache = max_num_seqs * seq * shape.kv_cache_bytes_per_token(rollout_dtype)
    if not engine_on_gpu:
        plan.train["engine weights (asleep, same memory)"] = engine_weights
        plan.notes.append("the engine shares the trainer's memory (CPU): its weights stay resident while asleep")
    elif engine_stays_awake:  # the compiled engine's keep_graphs: what its graphs read stays on the GPU
        plan.train["engine weights"] = engine_weights
        plan.train["KV cache (max_num_seqs sequences)"] = kv_cache
        plan.notes.append("rollout.engine.compiled.keep_graphs: the engine's weights and KV cache stay on the GPU")
    elif engine_sleeps_on_host:  # asleep, the engine's weights wait in host memory (vLLM's sleep level 1)
        plan.host["engine weights (asleep)"] = engine_weights
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
    if not sharded and compute < master:
        layers = 1 if gradient_checkpointing else shape.num_layers
        autocast_copies = (shape.vocab_size * h + layers * shape.layer_params) * compute
    head = partial(head_bytes, shape=shape, compute=compute, backend=kernels_backend, fused=fused_head)
    logits, head_rest = head(micro_batch * response_len, chunk_tokens=chunk_tokens, training=True)
    if lora_params:
        head_rest = 0  # the frozen head: the fused kernel keeps no weight-gradient accumulator
    policy_grads = trained["policy"] * trained_bytes * (1 if lora_params else on_gpu / world_size)
    transients = {
        "policy micro-batch backward (grads, activations, head, bf16 weights)": policy_grads
        + activations
        + logits
        + head_rest
        + autocast_copies,
        "optimizer step (grads, AdamW's temporaries)": 2
        * max(trained.values())
        * trained_bytes
        * (1 if lora_params else on_gpu / world_size),
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
        critic_grads = trained["critic"] * trained_bytes * (1 if lora_params else on_gpu / world_size)
        transients["critic micro-batch backward (grads, activations)"] = critic_grads + activations + autocast_copies
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
        plan.generate["KV cache (max_num_seqs sequences)"] = kv_cache
    # vLLM's share is a budget its own allocator keeps to: no slack on it
    plan.generate["allocator slack"] = ALLOCATOR_SLACK * sum(
        value for name, value in plan.generate.items() if not name.startswith("vLLM")
    )
    plan.generate["CUDA context and libraries"] = plan.train["CUDA context and libraries"]
    return plan
