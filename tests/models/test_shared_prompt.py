"""Each distinct prompt's forward run once (tinyzero/models/shared_prompt.py) against the full forward."""

import torch
from tolerances import assert_within, decoder_bound
from transformers import Qwen2Config, Qwen2ForCausalLM

from tinyzero.models.shared_prompt import distinct_rows, shared_prompt_logits
from tinyzero.ppo.logprobs import response_logprobs

PROMPTS, SAMPLES, RESPONSE = 4, 3, 6
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=50, max_position_embeddings=64, initializer_range=0.2, **SHAPE)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config)


def rollout_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids`, `attention_mask [PROMPTS·SAMPLES, width]` as training packs them: prompts of 3..8
    tokens left-padded, responses of 1..RESPONSE tokens right-padded, rows shuffled."""
    gen = torch.Generator().manual_seed(1)
    width = 8
    ids = torch.zeros(PROMPTS * SAMPLES, width + RESPONSE, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for p in range(PROMPTS):
        length = 3 + p + (p == PROMPTS - 1)  # 3, 4, 5, 7 tokens: every row has some padding
        prompt = torch.randint(1, 50, (length,), generator=gen)
        for s in range(SAMPLES):
            row, answer = p * SAMPLES + s, int(torch.randint(1, RESPONSE + 1, (), generator=gen))
            ids[row, width - length : width], mask[row, width - length : width] = prompt, 1
            ids[row, width : width + answer] = torch.randint(1, 50, (answer,), generator=gen)
            mask[row, width : width + answer] = 1
    order = torch.randperm(len(ids), generator=gen)
    return ids[order], mask[order]


def full_and_shared(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=RESPONSE + 1)
    return full.logits[:, :-1], shared_prompt_logits(model, ids, mask, positions, RESPONSE)


def bound(backward: bool = False) -> float:
    width = 8 + RESPONSE
    return decoder_bound(
        torch.float32, SHAPE["num_hidden_layers"], 64, 96, width * PROMPTS * SAMPLES, 50, backward=backward
    )


def test_distinct_rows_index_their_first_copy():
    rows = torch.tensor([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])
    first, inverse = distinct_rows(rows)
    assert torch.equal(rows[first][inverse], rows)
    assert sorted(first.tolist()) == [0, 1, 3]


def test_shared_prompt_logits_equal_the_full_forward():
    model = tiny_qwen2().eval()
    ids, mask = rollout_batch()
    with torch.no_grad():
        full, shared = full_and_shared(model, ids, mask)
    # the positions whose next token is a response token (its padding predicts nothing)
    predicts = mask[:, -RESPONSE:].bool()
    assert_within(shared[predicts], full[predicts], bound(), "logits")


def test_shared_prompt_gradients_equal_the_full_forward():
    """The prompt's keys and values collect the gradient of every row that shares them."""
    model = tiny_qwen2().train()
    ids, mask = rollout_batch()
    gradients = []
    for path in (0, 1):
        model.zero_grad()
        logits = full_and_shared(model, ids, mask)[path]
        labels = ids[:, -RESPONSE:]
        logprobs = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
        (logprobs * mask[:, -RESPONSE:]).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert_within(gradients[1], gradients[0], bound(backward=True), "parameter gradients")


def test_each_distinct_prompt_runs_once():
    model = tiny_qwen2().eval()
    ids, mask = rollout_batch()
    tokens = []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: tokens.append(args[0].numel()))
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, ids, mask, RESPONSE, share_prompts=True)
        reference, _ = response_logprobs(model, ids, mask, RESPONSE)
    prompt_width = ids.shape[1] - RESPONSE
    assert tokens[:2] == [PROMPTS * prompt_width, len(ids) * RESPONSE]
    valid = mask[:, -RESPONSE:].bool()
    assert_within(logprobs[valid], reference[valid], bound(), "log-probs")
