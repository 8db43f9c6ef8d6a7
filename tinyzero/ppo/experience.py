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


@dataclass
class Experience:
    """What the update trains on, per response token `[B, R]` on the training device: the mask, the
    advantages, the reference policy's log-probs, and where they were computed, the old policy's
    log-probs (None: on-policy, the update's own) and the critic's values and returns."""

    response_mask: torch.Tensor
    advantages: torch.Tensor
    ref_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def rows(self, name: str, idx: torch.Tensor, longest: int) -> torch.Tensor:
        """A micro-batch's rows of one tensor, cut to its longest response: `[b, longest]`."""
        return getattr(self, name)[idx, :longest]


def check_rewards(task, scores: torch.Tensor) -> None:
    """A task's rewards must be finite and within [min(0, format_score), 1]."""
    if not torch.isfinite(scores).all():
        raise ValueError(f"task {task.name} returned a non-finite reward")
    low, high = min(0.0, task.format_score), 1.0
    if ((scores < low) | (scores > high)).any():
        raise ValueError(f"task {task.name} returned rewards outside [{low}, {high}]: {scores.unique().tolist()}")


def sparse_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """`[B, R]`: each response's score `[B]` on its last token, 0 elsewhere (and for an empty response)."""
    length = response_mask.sum(-1).long()
    token_scores = torch.zeros_like(response_mask)
    rows = torch.nonzero(length > 0).squeeze(-1)
    token_scores[rows, length[rows] - 1] = scores.to(response_mask.device)[rows]
    return token_scores


def score_metrics(scores: torch.Tensor, response_mask: torch.Tensor, max_new_tokens: int) -> dict[str, float]:
    """The step's rewards and response lengths (a response of `max_new_tokens` was cut off)."""
    length = response_mask.sum(-1).long()
    return {
        "score/mean": scores.mean().item(),
        "score/accuracy": (scores >= 1.0).float().mean().item(),
        "score/format_rate": (scores > 0).float().mean().item(),
        "response_length/mean": length.float().mean().item(),
        "response_length/max": length.max().item(),
        "response_length/clip_rate": (length >= max_new_tokens).float().mean().item(),
    }
