"""Per-token KL estimators from sampled log-probs (Schulman, "Approximating KL divergence", 2020) and the
controllers that adapt the KL coefficient beta.

`logp` are log pi(a_t) of the tokens/actions that were sampled FROM pi; `ref_logp` are log pi_ref of the same
tokens. With r = pi_ref / pi, each estimator's mean under pi estimates KL(pi || pi_ref). Shapes (..., T).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = -log r = log pi - log pi_ref: unbiased, high variance, can be negative; (..., T)."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (log r)^2 / 2: biased, low variance, non-negative; (..., T)."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = r - log r - 1 with r = pi_ref / pi: unbiased and non-negative (GRPO's KL term); (..., T)."""
    log_r = ref_logp - logp
    # expm1: exp(x) - x - 1 cancels catastrophically near x = 0 and goes negative in float32/bf16.
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
# How a KL penalty in a loss is differentiated (see kl_penalty).
KL_GRADIENTS = ("unbiased", "estimator")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Dispatch to kl_k1 / kl_k2 / kl_k3 by name; (..., T)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator must be one of {sorted(KL_ESTIMATORS)}, got {estimator!r}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3", gradient: str = "unbiased",
               old_logp: Tensor | None = None) -> Tensor:
    """Per-token KL(pi || pi_ref) penalty to ADD to a loss, at tokens sampled from pi_old; (..., T).

    Its value is the chosen estimator of KL(pi || pi_ref). Its gradient depends on `gradient`:

    - "unbiased" (default): sg(rho) (log pi - log pi_ref) grad log pi with rho = pi / pi_old (1 on-policy), whose
      expectation under pi_old is exactly grad KL(pi || pi_ref) = E_pi[(log pi - log pi_ref) grad log pi], for
      every estimator (straight-through: the value of k1/k2/k3, the gradient of sg(rho) k2; verl's "k3+").
    - "estimator": the gradient of the estimator as written (TRL's k3-in-loss, kept for parity). Its expectation
      is grad KL(pi || pi_ref) only for k2 (on-policy); k3 gives grad KL(pi_ref || pi), the reverse direction;
      k1 gives 0 (E_pi[grad log pi] = 0), so k1 with gradient="estimator" is refused.

    Differentiating an estimator is not differentiating the KL it estimates: the sampling distribution moves with
    theta too (Schulman 2020; Tang & Munos 2025, "On a few pitfalls in KL divergence gradient estimation").
    """
    if gradient not in KL_GRADIENTS:
        raise ValueError(f"kl gradient must be one of {KL_GRADIENTS}, got {gradient!r}")
    if gradient == "estimator":
        if estimator == "k1":
            raise ValueError("kl_estimator='k1' with kl_gradient='estimator' has zero expected gradient (the "
                             "penalty would do nothing); use kl_gradient='unbiased' or another estimator")
        return kl_estimate(logp, ref_logp, estimator)
    value = kl_estimate(logp.detach(), ref_logp.detach(), estimator)
    log_r = logp - ref_logp.detach()
    rho = 1.0 if old_logp is None else torch.exp(logp.detach() - old_logp.detach())
    surrogate = 0.5 * rho * log_r ** 2  # gradient sg(rho) (log pi - log pi_ref) grad log pi
    return value + (surrogate - surrogate.detach())


class FixedKLController:
    """beta stays constant; same interface as the adaptive controllers."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int = 1) -> float:
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """Seed Algorithm 10 / PPO paper's rule: beta *= factor if KL > target * tol, beta /= factor if KL < target / tol.

    Defaults follow the seed (factor 1.5, tolerance 1.5); the PPO paper uses factor 2. beta is kept within
    [beta_min, beta_max] so it can always recover.
    """

    def __init__(self, beta: float, target: float, factor: float = 1.5, tolerance: float = 1.5,
                 beta_min: float = 1e-6, beta_max: float = 1e3):
        if target <= 0 or factor <= 1 or tolerance < 1:
            raise ValueError(f"need target > 0, factor > 1, tolerance >= 1; got {target}, {factor}, {tolerance}")
        super().__init__(beta)
        self.target, self.factor, self.tolerance = target, factor, tolerance
        self.beta_min, self.beta_max = beta_min, beta_max

    def update(self, kl: float, n_steps: int = 1) -> float:
        if not math.isfinite(kl):
            raise ValueError(f"AdaptiveKLController.update got a non-finite KL ({kl})")
        if kl > self.target * self.tolerance:
            self.beta *= self.factor
        elif kl < self.target / self.tolerance:
            self.beta /= self.factor
        self.beta = min(max(self.beta, self.beta_min), self.beta_max)
        return self.beta


class ProportionalKLController(FixedKLController):
    """Ziegler et al. 2019: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon."""

    def __init__(self, beta: float, target: float, horizon: int = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"need target > 0 and horizon > 0; got {target}, {horizon}")
        super().__init__(beta)
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_steps: int = 1) -> float:
        if not math.isfinite(kl):
            raise ValueError(f"ProportionalKLController.update got a non-finite KL ({kl})")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta
