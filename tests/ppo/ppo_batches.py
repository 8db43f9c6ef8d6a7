"""Random right-padded batches, and the loss aggregation as a Python loop in float64, for the RL math's tests."""

import random

import torch

SEEDS = range(24)


def random_batch(seed):
    """Random `[B, T]` tensors with random right-padding (some rows fully valid, some empty)."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    b, t = rng.randint(1, 12), rng.randint(1, 40)
    lengths = [rng.choice([0, t, rng.randint(0, t)]) for _ in range(b)]
    mask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths], dtype=torch.float64)

    def rand(scale=1.0):
        return torch.randn(b, t, generator=gen, dtype=torch.float64) * scale

    return b, t, lengths, mask, rand


def ref_aggregate(loss, lengths, mode):
    per_seq = [(sum(row[:n]), n) for row, n in zip(loss, lengths)]
    if mode in ("token-mean", "micro-batch-mean-token-mean"):  # one micro-batch: the same
        total = sum(n for _, n in per_seq)
        return sum(s for s, _ in per_seq) / max(total, 1)
    if mode == "seq-mean-token-sum":
        return sum(s for s, _ in per_seq) / len(per_seq)
    return sum(s / max(n, 1) for s, n in per_seq) / len(per_seq)
