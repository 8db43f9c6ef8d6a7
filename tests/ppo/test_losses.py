"""The losses, the KL estimators and the loss aggregation against Python loops in float64."""

import math
import random

import pytest
import torch
from ppo_batches import SEEDS, random_batch, ref_aggregate
from tolerances import assert_within, rounding_bound

from tinyzero.ppo.losses import LOSS_AGG_MODES, aggregate_loss, kl_penalty, policy_loss, value_loss


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
