"""The log-prob path through the model: the fused lm_head (no `[tokens, vocab]` logits) equals the
unfused head on a real tiny Qwen2, values and every parameter's gradient, tied and untied."""

import pytest
import torch
from tolerances import assert_within, decoder_bound, logprob_bounds

from tinyzero.models.tiny import build_tiny_model
from tinyzero.ppo.logprobs import response_logprobs


def batch(vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (3, 11), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # a left-padded prompt
    attention_mask[1, -2:] = 0  # a right-padded (short) response
    return input_ids, attention_mask


def run(model, input_ids, attention_mask, fused, backend, chunk_tokens="auto"):
    model.zero_grad()
    lp, ent = response_logprobs(
        model, input_ids, attention_mask, 5, 0.8, backend, fused_head=fused, chunk_tokens=chunk_tokens
    )
    ((lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum() + 0.3 * ent.sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return lp.detach(), ent.detach(), grads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("backend, chunk_tokens", [("torch", "auto"), ("torch", 4), ("triton", 7)])
def test_fused_head_equals_the_unfused_head(tied, backend, chunk_tokens):
    model = build_tiny_model(97, 0, hidden_size=32, num_layers=2, intermediate_size=64, tie_word_embeddings=tied)
    input_ids, attention_mask = batch(97, seed=int(tied))
    want_lp, want_ent, want_grads = run(model, input_ids, attention_mask, False, "torch")
    lp, ent, grads = run(model, input_ids, attention_mask, True, backend, chunk_tokens)
    # the decoder body is the same computation on both paths: they differ in the head only
    head = logprob_bounds(torch.float32, 97, 32, lp.numel())
    assert_within(lp, want_lp, 2 * head["logprobs"], "logprobs")
    assert_within(ent, want_ent, 2 * head["entropy"], "entropy")
    assert grads.keys() == want_grads.keys()
    # the head's dhidden runs back through the body's sums
    bound = decoder_bound(torch.float32, 2, 32, 64, input_ids.numel(), 97, backward=True)
    for name, grad in grads.items():
        assert_within(grad, want_grads[name], bound, name)
    assert model.lm_head.forward.__func__ is type(model.lm_head).forward  # the head is restored


def test_the_fused_head_never_returns_vocabulary_wide_outputs():
    model = build_tiny_model(97, 0, hidden_size=32, num_layers=2, intermediate_size=64)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    input_ids, attention_mask = batch(97, seed=3)
    response_logprobs(model, input_ids, attention_mask, 5, fused_head=True)
    response_logprobs(model, input_ids, attention_mask, 5, fused_head=False)
    # fused: (log p, entropy) per response token; unfused: logits for the last R+1 positions only
    assert shapes == [(3, 5, 2), (3, 6, 97)]


def test_fused_head_under_bf16_autocast_matches_the_unfused_head():
    model = build_tiny_model(97, 0, hidden_size=32, num_layers=2, intermediate_size=64)
    input_ids, attention_mask = batch(97, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_lp, _, _ = run(model, input_ids, attention_mask, False, "torch")
        lp, _, grads = run(model, input_ids, attention_mask, True, "torch")
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert_within(lp, want_lp, 2 * logprob_bounds(torch.bfloat16, 97, 32)["logprobs"], "logprobs")


def test_a_micro_batch_without_response_tokens():
    """A micro-batch whose responses are all empty (trimmed to R = 0) still runs and backpropagates."""
    model = build_tiny_model(97, 0, hidden_size=32, num_layers=2, intermediate_size=64)
    input_ids, attention_mask = batch(97, seed=5)
    for fused in (True, False):
        lp, ent = response_logprobs(model, input_ids, attention_mask, 0, fused_head=fused)
        assert lp.shape == ent.shape == (3, 0)
        (lp.sum() + ent.sum()).backward()
