"""From rollouts to training tensors: padding, decoding and scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinyzero.rollout.base import Rollouts


@dataclass
class Batch:
    """Prompt + response sequences, `N` rows: prompts left-padded, responses right-padded.

    input_ids, attention_mask `[N, P + R]`; response_mask `[N, R]`; group_index `[N]` the prompt
    (dataset index) each response answers.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    group_index: torch.Tensor
    prompt_slot: list[int]

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]


def pack(prompts: list[list[int]], rollouts: Rollouts, dataset_index: torch.Tensor, pad_token_id: int) -> Batch:
    responses = [r if r else [pad_token_id] for r in rollouts.response_ids]
    lengths = [len(r) for r in rollouts.response_ids]
    prompt_width = max(len(prompts[i]) for i in rollouts.prompt_index)
    response_width = max(map(len, responses))
    n = len(responses)
    input_ids = torch.full((n, prompt_width + response_width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros(n, response_width)
    for row, (slot, response, length) in enumerate(zip(rollouts.prompt_index, responses, lengths)):
        prompt = prompts[slot]
        input_ids[row, prompt_width - len(prompt) : prompt_width] = torch.tensor(prompt)
        input_ids[row, prompt_width : prompt_width + len(response)] = torch.tensor(response)
        attention_mask[row, prompt_width - len(prompt) : prompt_width + len(response)] = 1
        response_mask[row, :length] = 1
    group_index = dataset_index.cpu()[torch.tensor(rollouts.prompt_index)]
    return Batch(input_ids, attention_mask, response_mask, group_index, list(rollouts.prompt_index))


def score_rollouts(task, tokenizer, rollouts: Rollouts, ground_truths: list[dict]) -> tuple[torch.Tensor, list[str]]:
    """Task rewards `[N]` of the decoded responses, and the texts."""
    texts = tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
    scores = [task.score(text, ground_truths[slot]) for text, slot in zip(texts, rollouts.prompt_index)]
    return torch.tensor(scores, dtype=torch.float32), texts
