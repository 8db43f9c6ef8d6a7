"""Masked mean and whitening against Python loops in float64."""

import math

import pytest
import torch
from ppo_batches import SEEDS, random_batch, ref_aggregate
from tolerances import assert_within, rounding_bound

from tinyzero.ppo.losses import entropy_bonus
from tinyzero.ppo.masked import masked_mean, masked_whiten


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
