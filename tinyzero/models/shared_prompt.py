"""A causal LM's response logits with each distinct prompt run once.

The `n` responses to one prompt share it: its hidden states and keys/values do not depend on
what follows (causal attention), so the prompt is run once and its cache shared by its rows,
and the responses attend to it. The CPU demo's prompts are two thirds of each row (22 of 32
tokens, 16 prompts × 8 responses), so its forward and backward handle 2.5× fewer tokens. The
gradient is the same: each prompt's keys and values collect those of all its rows.
"""

from __future__ import annotations

import torch


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`first [U]`, `inverse [B]`): the first index of each distinct row of `rows [B, P]`, and for
    each row the position of its distinct row, so that `rows[first][inverse] == rows`."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    positions = torch.arange(len(rows), device=rows.device)
    # the smallest index of each distinct row: scattered in reverse, the earliest write lands last
    first = torch.empty(int(inverse.max()) + 1, dtype=torch.long, device=rows.device)
    first.scatter_(0, inverse.flip(0), positions.flip(0))
    return first, inverse


def shared_prompt_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    response_len: int,
) -> torch.Tensor:
    """The logits that predict the last `response_len` tokens of `input_ids [B, P+R]`, `[B, R, vocab]`
    (what `model(...).logits[:, -R-1:-1]` gives), from one forward of each distinct prompt (the
    first P columns, with their padding) and one of the responses over the shared prompt cache."""
    prompt_len = input_ids.shape[1] - response_len
    first, inverse = distinct_rows(input_ids[:, :prompt_len])
    prompts = model(
        input_ids=input_ids[first, :prompt_len],
        attention_mask=attention_mask[first, :prompt_len],
        position_ids=position_ids[first, :prompt_len],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = prompts.past_key_values
    cache.batch_select_indices(inverse)  # each row's prompt keys/values (an index: gradients add up)
    responses = model(
        input_ids=input_ids[:, prompt_len:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, prompt_len:],
        past_key_values=cache,
        use_cache=False,
    )
    # the prompt's last position predicts the first response token, response position t token t + 1
    return torch.cat([prompts.logits[inverse], responses.logits[:, :-1]], dim=1)
