"""The fixed and the adaptive KL coefficient."""

import pytest
import torch
from tolerances import rounding_bound

from tinyzero.ppo.kl_control import AdaptiveKLController, FixedKLController


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
