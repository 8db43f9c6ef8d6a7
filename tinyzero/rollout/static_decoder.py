"""Qwen2 decoding over a preallocated key/value cache: the compiled engine's model math.

The cache and every input of a decoding step sit at fixed addresses with fixed shapes, so a
step can be captured once as a CUDA graph and replayed. The math runs the model's own modules
(projections, norms, MLP, rotary embedding), so weights copied into the model in place are what
the next step (and a captured graph) reads.
"""

from __future__ import annotations

import torch
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb


def scores_in_float32(queries: torch.Tensor, keys_t: torch.Tensor) -> torch.Tensor:
    """`queries [N, M, d] @ keys_t [N, d, S]` written in float32, as flash attention and SDPA keep the
    scores that the trainer's log-probs see: on CUDA from bfloat16 / float16 inputs directly (cuBLAS
    accumulates in float32; `torch.bmm`'s `out_dtype`), elsewhere from inputs cast to float32."""
    if queries.is_cuda and queries.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(queries, keys_t, out_dtype=torch.float32)
    return torch.bmm(queries.float(), keys_t.float())


def grouped_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of `q [B, heads, T, d]` over `keys`/`values [B, kv_heads, S, d]`, each KV head
    serving `heads / kv_heads` query heads without copying the cache per query head (as SDPA's
    GQA fallback does); `mask [B, 1, T, S]` (True = attend). Scores and softmax in float32, the
    weights in the values' dtype for their product, as flash attention does. `[B, heads, T, d]`."""
    batch, heads, length, dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.reshape(batch * kv_heads, heads // kv_heads * length, dim)
    scores = scores_in_float32(grouped, keys.flatten(0, 1).transpose(1, 2))
    scores = scores.view(batch, kv_heads, heads // kv_heads, length, -1) * scale
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    weights = scores.softmax(-1).to(values.dtype).view(batch, kv_heads, heads // kv_heads * length, -1)
    return (weights @ values).view(batch, heads, length, dim)


def check_decodable(config) -> None:
    """Raise unless the model is one this decoder's math is: Qwen2 without sliding-window attention."""
    if config.model_type != "qwen2":
        raise ValueError(
            f"rollout.engine.kind=compiled decodes Qwen2 models, this one is {config.model_type!r}: "
            "use rollout.engine.kind=hf"
        )
    if getattr(config, "use_sliding_window", False):
        raise ValueError("rollout.engine.kind=compiled has no sliding-window attention: use rollout.engine.kind=hf")


class StaticDecoder:
    """A `[layers, max_batch_size, kv_heads, max_len, head_dim]` key and value cache and the
    forward passes that fill it: `prefill` writes the prompts, `step` decodes one token for
    the first `batch` rows from the `step_*` buffers (what a captured graph reads).

    Rows are sequences; columns are cache slots. Prompts are left-padded to one width, so slot
    `s` holds every row's token `s` and a row's position is `s` minus its padding.
    """

    def __init__(self, model: torch.nn.Module, max_batch_size: int, max_len: int, device: torch.device):
        config = model.config
        check_decodable(config)
        self.base, self.lm_head = model.model, model.lm_head
        self.max_batch_size, self.max_len = max_batch_size, max_len
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = self.base.embed_tokens.weight.dtype
        shape = (config.num_hidden_layers, max_batch_size, config.num_key_value_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        # the decoding step's inputs: token [B, 1], slot [1], padding per row [B], valid slots [B, max_len]
        self.step_tokens = torch.zeros(max_batch_size, 1, dtype=torch.long, device=device)
        self.step_slot = torch.zeros(1, dtype=torch.long, device=device)
        self.step_padding = torch.zeros(max_batch_size, dtype=torch.long, device=device)
        self.step_valid = torch.ones(max_batch_size, max_len, dtype=torch.bool, device=device)
        self.slots = torch.arange(max_len, device=device)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, attend_to) -> torch.Tensor:
        """Last-position logits `[B, vocab]` (float32) of `input_ids [B, T]` at `positions [B, T]`;
        `attend_to(layer, keys, values)` stores the new keys/values and returns those to attend to,
        `mask [B, 1, T, S]` (True = attend) over them."""
        hidden = self.base.embed_tokens(input_ids)
        cos, sin = self.base.rotary_emb(hidden, positions)
        batch, length = input_ids.shape
        for index, layer in enumerate(self.base.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q, k, v = (
                proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)
                for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
            )
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys, values = attend_to(index, k, v)
            out = grouped_attention(q, keys, values, mask, attention.scaling)
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm_head(self.base.norm(hidden[:, -1])).float()

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor, copies: int) -> torch.Tensor:
        """Run left-padded prompts `input_ids [P, W]` (`valid [P, W]`: not padding) once and write
        their keys/values to rows `p·copies … p·copies + copies − 1` of slots `0 … W − 1`, so the
        `copies` samples of a prompt share its prefill; sets the step buffers for those rows.
        Returns the prompts' last-position logits `[P, vocab]`."""
        prompts, width = input_ids.shape
        rows = prompts * copies
        if rows > self.max_batch_size or width >= self.max_len:
            raise ValueError(
                f"{rows} sequences of {width} prompt tokens do not fit the cache "
                f"({self.max_batch_size} sequences × {self.max_len} tokens)"
            )
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=input_ids.device).tril()
        # a padding query attends to itself alone: its output is never read, and a row with no
        # key to attend to would make NaNs
        mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=input_ids.device)

        def store(layer: int, k: torch.Tensor, v: torch.Tensor):
            self.keys[layer, :rows, :, :width] = k.repeat_interleave(copies, 0)
            self.values[layer, :rows, :, :width] = v.repeat_interleave(copies, 0)
            return k, v

        logits = self._forward(input_ids, positions, mask[:, None], store)
        self.step_valid[:rows, :width] = valid.repeat_interleave(copies, 0)
        self.step_valid[:rows, width:] = True
        self.step_padding[:rows] = (width - valid.sum(-1)).repeat_interleave(copies, 0)
        # rows past the batch (a graph's bucket may be larger) decode padding harmlessly
        self.step_valid[rows:] = True
        self.step_padding[rows:] = 0
        self.step_tokens[rows:] = 0
        return logits

    def step(self, batch: int, used_slots: int | None = None) -> torch.Tensor:
        """Decode `step_tokens[:batch]` at slot `step_slot`: logits `[batch, vocab]`. Reads only the
        step buffers and the cache, so it can be captured as a graph and replayed. Attends over the
        first `used_slots` cache slots (eager decoding: `step_slot + 1`, the later ones are masked
        anyway), or over all `max_len` when None (the fixed shapes a captured graph needs)."""
        used = used_slots or self.max_len
        keys, values = self.keys[:, :batch, :, :used], self.values[:, :batch, :, :used]
        positions = self.step_slot - self.step_padding[:batch, None]
        mask = (self.step_valid[:batch, :used] & (self.slots[:used] <= self.step_slot))[:, None, None, :]

        def store(layer: int, k: torch.Tensor, v: torch.Tensor):
            keys[layer].index_copy_(2, self.step_slot, k)
            values[layer].index_copy_(2, self.step_slot, v)
            return keys[layer], values[layer]

        return self._forward(self.step_tokens[:batch], positions, mask, store)
