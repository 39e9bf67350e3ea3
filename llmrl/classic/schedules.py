"""Schedules x(t) for step sizes and exploration rates (tabular TD learners and DQN's epsilon / PER beta)."""
from __future__ import annotations

from typing import Callable

Schedule = Callable[[int], float]


def constant_schedule(value: float) -> Schedule:
    """x(t) = value."""
    return lambda t: value


def linear_schedule(start: float, end: float, duration: int) -> Schedule:
    """x(t) goes linearly from `start` at t = 0 to `end` at t = duration, then stays at `end`."""
    if duration < 1:
        raise ValueError(f"linear_schedule duration must be >= 1, got {duration}")
    return lambda t: start + (end - start) * min(t, duration) / duration


def power_schedule(p: float = 0.8, c: float = 1.0) -> Schedule:
    """x(t) = c / (t + 1)^p: for 1/2 < p <= 1, sum_t x = inf and sum_t x^2 < inf (Robbins-Monro), the step sizes
    under which Q-learning and TD(0) converge w.p. 1 when t counts the visits of each (s, a) or s."""
    if not 0.5 < p <= 1.0:
        raise ValueError(f"power_schedule p must be in (0.5, 1] for sum x = inf and sum x^2 < inf, got {p}; "
                         "use constant_schedule for a fixed step")
    return lambda t: c / (t + 1) ** p


def as_schedule(x: float | Schedule, name: str, low: float, high: float) -> Schedule:
    """`x` itself if it is a schedule, else the constant schedule of the number x, which must be in [low, high]."""
    if callable(x):
        return x
    if not low <= x <= high:
        raise ValueError(f"{name} must be in [{low}, {high}] or a schedule t -> value, got {x}")
    return constant_schedule(float(x))
