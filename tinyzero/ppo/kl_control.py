"""The KL coefficient β of a KL-in-the-reward run: fixed, or adapted toward a target KL."""

from __future__ import annotations

import math

from tinyzero.registry import Registry

# kind -> the controller built from the algorithm config (`make_kl_controller`)
KL_CONTROLLERS: Registry = Registry("algorithm.kl_ctrl")


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Adaptive β (Ziegler et al. 2019): β ← β (1 + clip(KL/KL_target − 1, ±0.2) · n / horizon)."""

    def __init__(self, kl_coef: float, target_kl: float, horizon: int):
        super().__init__(kl_coef)
        self.target_kl, self.horizon = target_kl, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target_kl - 1, -0.2), 0.2)
        if math.isfinite(error):
            self.value *= 1 + error * n_steps / self.horizon


KL_CONTROLLERS.register("fixed", lambda algorithm: FixedKLController(algorithm.kl_coef))
KL_CONTROLLERS.register(
    "adaptive", lambda algorithm: AdaptiveKLController(algorithm.kl_coef, algorithm.target_kl, algorithm.kl_horizon)
)


def make_kl_controller(algorithm) -> FixedKLController:
    """`algorithm.kl_ctrl`'s controller, from `algorithm.kl_coef` (and, adaptive, `target_kl`, `kl_horizon`)."""
    return KL_CONTROLLERS[algorithm.kl_ctrl](algorithm)
