"""The GAE kernel under TRITON_INTERPRET=1 against the float64 loop reference."""

import pytest
import torch
from references import float64_gae
from tinyzero.kernels.gae import gae
from tolerances import assert_within, rounding_bound


@pytest.mark.parametrize("batch, steps", [(1, 1), (3, 17), (64, 40), (65, 130), (130, 7), (200, 300)])
@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_reference_on_random_padding(batch, steps, gamma, lam):
    gen = torch.Generator().manual_seed(batch * 1000 + steps)
    lengths = torch.randint(0, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    mask = (torch.arange(steps)[None] < lengths[:, None]).float()
    rewards, values = torch.randn(batch, steps, generator=gen), torch.randn(batch, steps, generator=gen)
    want_adv, want_ret = float64_gae(rewards, values, mask, gamma, lam)

    poisoned = (torch.full((batch, steps), float("nan")), torch.full((batch, steps), float("nan")))
    adv, ret = gae(rewards, values, mask, gamma, lam, out=poisoned)
    assert adv is poisoned[0] and ret is poisoned[1]
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all(), "an output element was never written"
    # float32: δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1} (a sum of up to T terms), R = A + V
    bound = rounding_bound(torch.float32, [steps], ops=6)
    assert_within(adv, want_adv, bound, "advantages")
    assert_within(ret, want_ret, bound, "returns")


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one \\[B, T\\] shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), 1.0, 1.0)
