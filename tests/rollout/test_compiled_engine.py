"""The compiled rollout engine (static KV cache; CUDA graphs on GPUs) against transformers.

On CPU it decodes eagerly: everything but the graph capture is checked here, against
transformers' own forward and `generate` on real saved models.
"""

import pytest
import torch
from tolerances import assert_within, decoder_bound, rounding_bound
from transformers import Qwen2Config, Qwen2ForCausalLM

from tinyzero.rollout import CompiledEngine, HFEngine, SamplingParams
from tinyzero.rollout.compiled import batch_bucket, sample_tokens
from tinyzero.rollout.static_decoder import StaticDecoder, grouped_attention

RAGGED_PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


def random_qwen2(path, seed: int, tie: bool, **shape):
    """A random Qwen2 with weights large enough that greedy decoding does not just repeat a token."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=96,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        **shape,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(path)
    return path


TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384)
TWO_LAYERS = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96
)


@pytest.fixture(scope="module", params=["tiny", "two_layers"])
def model_dir(request, tmp_path_factory):
    """The demo's tiny shape (tied embeddings) and a 2-layer Qwen2 with 4 query heads per KV head (untied)."""
    shape, tie = (TINY, True) if request.param == "tiny" else (TWO_LAYERS, False)
    return random_qwen2(tmp_path_factory.mktemp(request.param), seed=0, tie=tie, **shape)


def engines(path, eos=1, max_batch_size=64):
    hf = HFEngine(str(path), eos, 0, max_batch_size=max_batch_size)
    compiled = CompiledEngine(str(path), eos, 0, max_batch_size=max_batch_size, max_model_len=64)
    for engine in (hf, compiled):
        engine.wake_up()
    return hf, compiled


def greedy(max_new_tokens=24):
    return SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens)


def decoder_and_full_forward(model, full_model=None):
    """Logits of prefill and of each decoding step (teacher forcing random next tokens) `[steps,
    B, vocab]`, and those of `full_model`'s (default `model`'s) forward over the whole left-padded
    sequences at the same positions."""
    decoder = StaticDecoder(model, max_batch_size=8, max_len=32, device=torch.device("cpu"))
    width = max(map(len, RAGGED_PROMPTS))
    input_ids = torch.zeros(len(RAGGED_PROMPTS), width, dtype=torch.long)
    valid = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, prompt in enumerate(RAGGED_PROMPTS):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        valid[row, width - len(prompt) :] = True
    continuation = torch.randint(2, 96, (len(RAGGED_PROMPTS), 6), generator=torch.Generator().manual_seed(0))
    full_ids = torch.cat([input_ids, continuation], 1)
    full_mask = torch.cat([valid, torch.ones_like(continuation, dtype=torch.bool)], 1).long()
    with torch.no_grad():
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
        reference = (full_model or model)(input_ids=full_ids, attention_mask=full_mask, position_ids=positions)
        reference = reference.logits.float()
        logits = [decoder.prefill(input_ids, valid, copies=1)]
        for t in range(continuation.shape[1] - 1):
            decoder.step_tokens[: len(RAGGED_PROMPTS), 0] = continuation[:, t]
            decoder.step_slot.fill_(width + t)
            logits.append(decoder.step(len(RAGGED_PROMPTS)))
    return torch.stack(logits), reference[:, width - 1 : -1].transpose(0, 1)


def test_decoding_steps_equal_the_full_forward(model_dir):
    """Prefill and each decoding step give the logits of transformers' forward over the whole
    left-padded sequence, row by row."""
    model = Qwen2ForCausalLM.from_pretrained(model_dir).eval()
    logits, reference = decoder_and_full_forward(model)
    c = model.config
    tokens = max(map(len, RAGGED_PROMPTS)) + 6  # the prompts' width and 6 decoding steps
    bound = decoder_bound(torch.float32, c.num_hidden_layers, c.hidden_size, c.intermediate_size, tokens, c.vocab_size)
    for step, (got, want) in enumerate(zip(logits, reference)):
        assert_within(got, want, bound, f"step {step}")


def test_bfloat16_decoding_is_as_close_to_float32_as_the_trainers_sdpa(model_dir):
    """In bfloat16 the decoder's logits stray from the float32 forward no more than the trainer's path
    (transformers' bfloat16 forward with SDPA, float32 scores) does: the difference is rounding, not a
    wrong cast or mask."""
    full32 = Qwen2ForCausalLM.from_pretrained(model_dir).eval()
    bf16 = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    logits, reference32 = decoder_and_full_forward(bf16, full_model=full32)
    _, reference_bf16 = decoder_and_full_forward(bf16)
    ours, theirs = (logits - reference32).abs().max(), (reference_bf16 - reference32).abs().max()
    assert ours <= 1.5 * theirs, (ours, theirs)


def test_bfloat16_rollout_logprobs_follow_the_trainers_not_eager_attention(model_dir):
    """The rollout policy is the trained one: in bfloat16 the decoder's log-probs of each next token are
    within three quarters of the distance to the trainer's (SDPA: float32 scores) that transformers' eager attention
    is (it rounds the scores to bfloat16, as this decoder did; measured on an AMD EPYC 2026-12-02: 0.28
    and 0.51 of it on the two shapes)."""
    models = {
        attention: Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation=attention)
        for attention in ("sdpa", "eager")
    }
    rollout, trainer = decoder_and_full_forward(models["sdpa"].eval())
    _, eager = decoder_and_full_forward(models["eager"].eval())
    logprobs = {name: x.log_softmax(-1) for name, x in {"rollout": rollout, "trainer": trainer, "eager": eager}.items()}
    ours = (logprobs["rollout"] - logprobs["trainer"]).abs().max()
    eagers = (logprobs["eager"] - logprobs["trainer"]).abs().max()
    assert ours <= 0.75 * eagers, (ours, eagers)


def test_greedy_rollouts_equal_transformers_generate(model_dir):
    hf, compiled = engines(model_dir)
    expected = hf.generate(RAGGED_PROMPTS, greedy()).response_ids
    assert len({tuple(r) for r in expected}) == len(RAGGED_PROMPTS)  # the rows do differ
    assert all(len(set(r)) > 3 for r in expected)  # and are not one repeated token
    assert compiled.generate(RAGGED_PROMPTS, greedy()).response_ids == expected


def test_rollouts_stop_at_eos_per_sequence(model_dir):
    """With an EOS the greedy rows emit at different steps, each row ends there (EOS kept), as
    transformers' rows do."""
    hf, _ = engines(model_dir)
    free_run = hf.generate(RAGGED_PROMPTS, greedy()).response_ids
    eos = free_run[0][5]  # a token row 0 emits at step 5
    hf, compiled = engines(model_dir, eos=eos)
    expected = hf.generate(RAGGED_PROMPTS, greedy()).response_ids
    got = compiled.generate(RAGGED_PROMPTS, greedy()).response_ids
    assert got == expected
    assert got[0][-1] == eos and len(got[0]) <= 6
    assert len({len(r) for r in got}) > 1


def test_n_samples_share_the_prompt_prefill(model_dir):
    """n copies of a prompt's cache rows: near-greedy sampling gives each copy the prompt's greedy
    response, in prompt order."""
    hf, compiled = engines(model_dir)
    expected = hf.generate(RAGGED_PROMPTS, greedy()).response_ids
    sampling = SamplingParams(n=3, temperature=1e-4, max_new_tokens=24, seed=1)
    rollouts = compiled.generate(RAGGED_PROMPTS, sampling)
    assert rollouts.prompt_index == [i for i in range(len(RAGGED_PROMPTS)) for _ in range(3)]
    assert rollouts.response_ids == [r for r in expected for _ in range(3)]


def test_sampled_rollouts_are_reproducible_per_seed(model_dir):
    _, compiled = engines(model_dir, max_batch_size=8)  # 4 prompts × 3 samples: two chunks
    sampling = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=7)
    first = compiled.generate(RAGGED_PROMPTS, sampling).response_ids
    assert compiled.generate(RAGGED_PROMPTS, sampling).response_ids == first
    other = compiled.generate(RAGGED_PROMPTS, SamplingParams(n=3, max_new_tokens=16, seed=8)).response_ids
    assert other != first
    assert len({tuple(r) for r in first[:3]}) > 1  # the samples of one prompt differ


def test_weight_push_between_calls(model_dir, tmp_path):
    """Weights copied in place after a sleep: the next rollouts are those of the pushed model."""
    other = random_qwen2(
        tmp_path / "other",
        seed=1,
        tie=model_dir.name.startswith("tiny"),
        **(TINY if model_dir.name.startswith("tiny") else TWO_LAYERS),
    )
    hf_other, _ = engines(other)
    expected = hf_other.generate(RAGGED_PROMPTS, greedy()).response_ids
    _, compiled = engines(model_dir)
    before = compiled.generate(RAGGED_PROMPTS, greedy()).response_ids
    compiled.sleep()
    with pytest.raises(RuntimeError, match="needs weights and kv_cache awake"):
        compiled.generate(RAGGED_PROMPTS, greedy())
    compiled.wake_up(["weights"])
    compiled.load_weights(Qwen2ForCausalLM.from_pretrained(other).named_parameters())
    compiled.reset_prefix_cache()
    compiled.wake_up(["kv_cache"])
    after = compiled.generate(RAGGED_PROMPTS, greedy()).response_ids
    assert after == expected and after != before


def test_sample_tokens_keeps_to_the_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().repeat(4000, 1)
    torch.manual_seed(0)
    drawn = sample_tokens(logits, temperature=1.0, top_p=0.7)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    share = (drawn == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03
    assert set(sample_tokens(logits, temperature=1.0, top_p=1.0).tolist()) == {0, 1, 2, 3}
    assert sample_tokens(logits[:2], temperature=0, top_p=1.0).tolist() == [0, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_tokens_draws_each_token_at_its_probability(temperature):
    """Each token's share of 20 000 draws lies within 4 standard errors of its probability at the
    temperature (p^(1/τ), renormalised); a token of probability 0 is never drawn."""
    probs = torch.tensor([0.4, 0.0, 0.25, 0.2, 0.1, 0.05])
    expected = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
    torch.manual_seed(0)
    drawn = sample_tokens(probs.log().repeat(20000, 1), temperature=temperature, top_p=1.0)
    share = torch.bincount(drawn, minlength=len(probs)) / len(drawn)
    standard_error = (expected * (1 - expected) / len(drawn)).sqrt()
    assert share[1] == 0
    assert ((share - expected).abs() <= 4 * standard_error).all(), (share, expected)


def test_batch_buckets():
    assert [batch_bucket(b, 256) for b in (1, 8, 9, 16, 17, 128, 200, 256)] == [8, 8, 16, 16, 32, 128, 256, 256]
    assert batch_bucket(100, 96) == 96


def test_engine_limits_name_the_setting(model_dir, tmp_path):
    _, compiled = engines(model_dir)
    with pytest.raises(ValueError, match=r"exceed the compiled engine's cache of max_model_len=64"):
        compiled.generate([[3] * 50], greedy(max_new_tokens=20))
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="compiled decodes Qwen2 models, this one is 'llama'"):
        CompiledEngine(str(tmp_path / "llama"), 1, 0)


def test_grouped_attention_equals_sdpa_over_repeated_heads():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 5, 16, generator=gen).transpose(1, 2).contiguous().transpose(1, 2)  # strided like a model's
    keys, values = torch.randn(2, 3, 2, 7, 16, generator=gen)
    mask = torch.rand(3, 1, 5, 7, generator=gen) > 0.3
    mask[..., 0] = True
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, keys.repeat_interleave(4, 1), values.repeat_interleave(4, 1), attn_mask=mask, scale=0.25
    )
    # two float32 paths: scores sum 16 products, outputs 7 values; scale, mask, max, exp, divide
    bound = rounding_bound(torch.float32, [16, 7], ops=5, sides=2)
    assert_within(grouped_attention(q, keys, values, mask, 0.25), expected, bound)
