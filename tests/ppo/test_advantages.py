"""The advantage estimators against slow, obviously-correct references: Python loops in float64."""

import math
import random

import pytest
import torch
from ppo_batches import SEEDS, random_batch
from tolerances import assert_within, rounding_bound

from tinyzero.ppo.advantages import compute_gae, compute_grpo_advantages


def ref_gae(rewards, values, lengths, gamma, lam):
    b, t = len(rewards), len(rewards[0])
    adv = [[0.0] * t for _ in range(b)]
    ret = [[0.0] * t for _ in range(b)]
    for i in range(b):
        running = 0.0
        for j in reversed(range(lengths[i])):
            next_value = values[i][j + 1] if j + 1 < lengths[i] else 0.0
            delta = rewards[i][j] + gamma * next_value - values[i][j]
            running = delta + gamma * lam * running
            adv[i][j] = running
            ret[i][j] = running + values[i][j]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_loop(seed):
    b, t, lengths, mask, rand = random_batch(seed)
    rewards, values = rand(), rand()
    gamma, lam = random.Random(seed).choice([(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (1.0, 0.5)])
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = ref_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    # float64 both: δ (3 ops), A = δ + γλA' (a sum of up to T terms, 3 ops), R = A + V
    bound = rounding_bound(torch.float64, [t], ops=7, sides=2)
    assert_within(adv, ref_adv, bound, "advantages")
    assert_within(ret, ref_ret, bound, "returns")


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.25, 0.75, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    bound = rounding_bound(torch.float32, [4], ops=7)
    # with γ = λ = 1 the advantage is the return-to-go minus the value; padding is 0
    assert_within(adv, torch.tensor([[0.5, 0.75, 0.25, 0.0]]), bound, "advantages")
    assert_within(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), bound, "returns")
    adv, _ = compute_gae(rewards, values, mask, gamma=0.5, lam=0.0)
    # λ = 0: one-step TD errors δ_t = r_t + γ V_{t+1} − V_t
    want = torch.tensor([[0.5 * 0.25 - 0.5, 0.5 * 0.75 - 0.25, 1.0 - 0.75, 0.0]])
    assert_within(adv, want, bound, "TD errors")


def ref_grpo(scores, groups, lengths, t, norm_by_std, eps):
    out = []
    for i, s in enumerate(scores):
        members = [scores[j] for j in range(len(scores)) if groups[j] == groups[i]]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / len(members)
            std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1))
        a = (s - mean) / (std + eps) if norm_by_std else s - mean
        out.append([a] * lengths[i] + [0.0] * (t - lengths[i]))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_matches_loop(seed):
    b, t, lengths, mask, _ = random_batch(seed)
    rng = random.Random(seed)
    scores = [rng.choice([0.0, 0.1, 1.0]) + rng.random() * (seed % 2) for _ in range(b)]
    groups = [rng.randint(0, max(1, b // 3)) * 7 for _ in range(b)]
    # float32 inside: each group's sums for the mean and the variance (up to B terms), then a
    # difference, a square root and a division
    bound = rounding_bound(torch.float32, [b, b], ops=8)
    for norm in (True, False):
        got = compute_grpo_advantages(torch.tensor(scores, dtype=torch.float64), torch.tensor(groups), mask, norm)
        assert_within(got, ref_grpo(scores, groups, lengths, t, norm, 1e-6), bound, f"norm_by_std={norm}")


def test_grpo_hand_computed():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    mask = torch.ones(5, 2)
    adv = compute_grpo_advantages(scores, groups, mask, eps=0.0)
    s = math.sqrt(0.5)  # unbiased std of {0, 1}
    want = torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 1.0])
    assert_within(adv[:, 0], want, rounding_bound(torch.float32, [2, 2], ops=8))
