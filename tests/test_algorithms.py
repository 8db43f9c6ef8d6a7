"""The RL math against slow, obviously-correct references: Python loops in float64."""

import math
import random

import pytest
import torch
from tolerances import assert_within, rounding_bound

from tinyzero.ppo.advantages import compute_gae, compute_grpo_advantages
from tinyzero.ppo.kl_control import AdaptiveKLController, FixedKLController
from tinyzero.ppo.losses import LOSS_AGG_MODES, aggregate_loss, entropy_bonus, kl_penalty, policy_loss, value_loss
from tinyzero.ppo.masked import masked_mean, masked_whiten

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


def ref_kl(logp, ref, kind):
    out = []
    for a, b in zip(logp, ref):
        log_ratio = b - a
        if kind in ("k1", "kl"):
            out.append(-log_ratio)
        elif kind in ("k2", "mse"):
            out.append(0.5 * log_ratio**2)
        else:
            out.append(min(max(math.exp(log_ratio) - 1 - log_ratio, -10), 10))
    return out


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl", "kl", "mse"])
@pytest.mark.parametrize("seed", range(4))
def test_kl_penalty_matches_loop(kind, seed):
    _, _, _, _, rand = random_batch(seed)
    logp, ref = rand(2.0), rand(2.0)
    got = kl_penalty(logp, ref, kind)
    want = torch.tensor([ref_kl(a, b, kind) for a, b in zip(logp.tolist(), ref.tolist())], dtype=torch.float64)
    # float64 both, elementwise: a difference, an exp, two more differences and the clamp
    assert_within(got, want, rounding_bound(torch.float64, ops=5, sides=2))


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="algorithm.kl_penalty.*k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def ref_aggregate(loss, lengths, mode):
    per_seq = [(sum(row[:n]), n) for row, n in zip(loss, lengths)]
    if mode in ("token-mean", "micro-batch-mean-token-mean"):  # one micro-batch: the same
        total = sum(n for _, n in per_seq)
        return sum(s for s, _ in per_seq) / max(total, 1)
    if mode == "seq-mean-token-sum":
        return sum(s for s, _ in per_seq) / len(per_seq)
    return sum(s / max(n, 1) for s, n in per_seq) / len(per_seq)


def ref_policy_loss(old, new, adv, lengths, lo, hi, c, mode):
    losses, clipped_count, kl_sum, count = [], 0, 0.0, 0
    for i in range(len(old)):
        row = []
        for j in range(len(old[i])):
            ratio = math.exp(new[i][j] - old[i][j])
            a = adv[i][j]
            l1, l2 = -a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi)
            loss = max(l1, l2)
            if c is not None and a < 0:
                loss = min(loss, -a * c)
            row.append(loss)
            if j < lengths[i]:
                clipped_count += l2 > l1
                kl_sum += old[i][j] - new[i][j]
                count += 1
        losses.append(row)
    return ref_aggregate(losses, lengths, mode), clipped_count / max(count, 1), kl_sum / max(count, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_matches_loop(seed):
    _, _, lengths, mask, rand = random_batch(seed)
    rng = random.Random(seed)
    old = rand(1.0)
    new = old + rand(0.3)
    adv = rand()
    lo, hi = rng.choice([(0.2, 0.2), (0.2, 0.28), (0.1, 0.3)])
    c = rng.choice([None, 3.0])
    # float64 both: the ratio, the clipped products (6 ops), sums over tokens and sequences;
    # terms of size ~1, so the bound is also an absolute floor where the sums cancel
    bound = rounding_bound(torch.float64, [mask.numel(), mask.numel()], ops=8, sides=2)
    for mode in LOSS_AGG_MODES:
        loss, clipfrac, kl = policy_loss(old, new, adv, mask, lo, hi, c, mode)
        want = ref_policy_loss(old.tolist(), new.tolist(), adv.tolist(), lengths, lo, hi, c, mode)
        for got, ref in zip((loss, clipfrac, kl), want):
            assert got.item() == pytest.approx(ref, rel=bound, abs=bound)


def test_policy_loss_hand_computed():
    old = torch.zeros(1, 2, dtype=torch.float64)
    new = torch.log(torch.tensor([[1.5, 0.5]], dtype=torch.float64))
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, clipfrac, _ = policy_loss(old, new, adv, mask, 0.2, 0.2)
    bound = rounding_bound(torch.float64, [2], ops=8)  # log, exp, clip, products, a mean of 2
    # token 0: ratio 1.5 clipped to 1.2 → −1.2; token 1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2, rel=bound)
    assert clipfrac.item() == 1.0  # 2 of 2 tokens: exact
    # dual clip caps the loss of negative advantages at c·|A|
    new = torch.log(torch.tensor([[1.0, 5.0]], dtype=torch.float64))
    loss, _, _ = policy_loss(old, new, adv, mask, 0.2, 0.2, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((-1.0 + 3.0) / 2, rel=bound)


def test_policy_loss_gradient_flows_only_through_new_logprobs():
    old = torch.zeros(2, 3)
    new = torch.zeros(2, 3, requires_grad=True)
    loss, _, _ = policy_loss(old, new, torch.ones(2, 3), torch.ones(2, 3))
    loss.backward()
    assert_within(new.grad, torch.full((2, 3), -1 / 6), rounding_bound(torch.float32, [6], ops=4))


@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_matches_loop(seed):
    _, _, lengths, mask, rand = random_batch(seed)
    values, old, returns = rand(), rand(), rand()
    clip = random.Random(seed).choice([0.2, 0.5, 10.0])
    # float64 both: the clipped squares (6 ops), sums over tokens and sequences; terms ~1
    bound = rounding_bound(torch.float64, [mask.numel(), mask.numel()], ops=8, sides=2)
    for mode in LOSS_AGG_MODES:
        loss, clipfrac = value_loss(values, old, returns, mask, clip, mode)
        rows, clipped, count = [], 0, 0
        for i in range(len(lengths)):
            row = []
            for j in range(values.shape[1]):
                v, o, r = values[i, j].item(), old[i, j].item(), returns[i, j].item()
                vc = o + min(max(v - o, -clip), clip)
                row.append(0.5 * max((v - r) ** 2, (vc - r) ** 2))
                if j < lengths[i]:
                    clipped += (vc - r) ** 2 > (v - r) ** 2
                    count += 1
            rows.append(row)
        assert loss.item() == pytest.approx(ref_aggregate(rows, lengths, mode), rel=bound, abs=bound)
        assert clipfrac.item() == pytest.approx(clipped / max(count, 1), rel=bound)


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_statistics_match_loop(seed):
    _, _, lengths, mask, rand = random_batch(seed)
    x = rand(3.0) + 1.0
    items = [x[i, j].item() for i in range(len(lengths)) for j in range(lengths[i])]
    if len(items) < 2:
        return
    mean = sum(items) / len(items)
    var = sum((v - mean) ** 2 for v in items) / (len(items) - 1)
    # float64 both: the mean's and the variance's sums over the items, then (x − mean) / √var
    bound = rounding_bound(torch.float64, [len(items), len(items)], ops=6, sides=2)
    assert masked_mean(x, mask).item() == pytest.approx(mean, rel=bound)
    white = masked_whiten(x, mask)
    want = torch.zeros_like(x)
    for i in range(len(lengths)):
        for j in range(lengths[i]):
            want[i, j] = (x[i, j].item() - mean) / math.sqrt(var + 1e-8)
    assert_within(white * mask, want, bound, "whitened")
    unshifted = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(unshifted, mask).item() == pytest.approx(mean, rel=bound)
    ent = entropy_bonus(x, mask, "seq-mean-token-mean")
    assert ent.item() == pytest.approx(ref_aggregate(x.tolist(), lengths, "seq-mean-token-mean"), rel=bound)


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_shares_of_micro_batches_sum_to_the_mini_batch_loss(seed):
    """Split into micro-batches with the mini-batch's counts, the shares add up to the whole
    batch's loss in every mode but TinyZero's, which averages per-micro-batch token means."""
    b, _, lengths, mask, rand = random_batch(seed)
    loss = rand()
    split = random.Random(seed).randint(1, b)
    parts = [slice(0, split), slice(split, b)]
    num_tokens, num_seqs = mask.sum().item(), b
    # float64 both: sums over tokens and sequences of terms ~1 (also an absolute floor)
    bound = rounding_bound(torch.float64, [mask.numel(), mask.numel()], ops=4, sides=2)
    for mode in LOSS_AGG_MODES:
        got = sum(aggregate_loss(loss[p], mask[p], mode, num_tokens, num_seqs) for p in parts)
        if mode == "micro-batch-mean-token-mean":
            want = sum(ref_aggregate(loss[p].tolist(), lengths[p], "token-mean") * len(lengths[p]) / b for p in parts)
        else:
            want = ref_aggregate(loss.tolist(), lengths, mode)
        assert got.item() == pytest.approx(want, rel=bound, abs=bound), mode


def test_token_mean_is_not_a_mean_of_micro_batch_means():
    """4 sequences in 2 micro-batches of 2 (token counts 1 + 3 and 4 + 4): token-mean is the mean
    over all 12 tokens, not the mean of the two micro-batches' token means (TinyZero's mode)."""
    loss = torch.tensor([[10.0, 0, 0, 0], [5.0, 5, 5, 0], [8.0, 8, 8, 8], [6.0, 6, 6, 6]])
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    token_mean = (10 + 15 + 32 + 24) / 12
    bound = rounding_bound(torch.float32, [8], ops=3)  # float32: a micro-batch's 8 terms, a division, a sum
    shares = [aggregate_loss(loss[p], mask[p], "token-mean", 12, 4) for p in (slice(0, 2), slice(2, 4))]
    assert sum(shares).item() == pytest.approx(token_mean, rel=bound)
    tinyzero = [
        aggregate_loss(loss[p], mask[p], "micro-batch-mean-token-mean", 12, 4) for p in (slice(0, 2), slice(2, 4))
    ]
    assert sum(tinyzero).item() == pytest.approx((25 / 4 + 56 / 8) / 2, rel=bound)


def test_extreme_log_ratios_stay_finite_and_padding_cannot_poison_the_loss():
    """A log-ratio of 89 on a real token is clamped to 20 before `exp` (e^89 is inf in fp32); an
    inf or -inf log-prob on a padded token is dropped by `where`, never 0·inf = NaN."""
    old = torch.zeros(1, 3)
    new = torch.tensor([[89.0, 0.0, float("inf")]], requires_grad=True)
    adv = torch.tensor([[-1.0, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac, approx_kl = policy_loss(old, new, adv, mask)
    assert loss.item() == pytest.approx((math.exp(20.0) - 1.0) / 2, rel=rounding_bound(torch.float32, [2], ops=5))
    loss.backward()
    assert torch.isfinite(new.grad).all()
    assert torch.isfinite(clipfrac) and torch.isfinite(approx_kl)
    ref = torch.tensor([[-89.0, 0.0, 0.0]])
    logp = torch.tensor([[0.0, 0.0, float("-inf")]])
    for kind in ("k1", "k2", "k3"):
        kl = kl_penalty(logp, ref, kind)
        for mode in LOSS_AGG_MODES:
            assert torch.isfinite(aggregate_loss(kl, mask, mode)), (kind, mode)
    assert kl_penalty(torch.tensor([-100.0]), torch.tensor([0.0]), "k3").item() == 10.0  # the clamp: exact


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="algorithm.loss_agg_mode"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.1, target_kl=1.0, horizon=100)
    ctl.update(current_kl=2.0, n_steps=10)  # error clipped to +0.2
    bound = rounding_bound(torch.float64, ops=10)  # Python floats: 5 operations per update, 2 updates
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100), rel=bound)
    ctl.update(current_kl=0.9, n_steps=10)
    assert ctl.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100), rel=bound)
    restored = AdaptiveKLController(0.5, 1.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
