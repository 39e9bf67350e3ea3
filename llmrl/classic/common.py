"""Plumbing for the deep gym agents (DQN family, policy-gradient family): environments, deterministic
evaluation, save/load of a trained agent, and the "solved" tracker the benchmarks report.

Truncation rule used by every agent: at a time-limit truncation the next state's value is bootstrapped
(`terminated` = 0, the episode is still "done"); only a true termination zeroes it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ..utils import atomic_write_text, config_dict


def make_env(env_id: str, seed: int, **kwargs) -> gym.Env:
    """A gymnasium env that records episode returns/lengths in info["episode"], with seeded spaces."""
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id, **kwargs))
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


def make_vec_env(env_id: str, num_envs: int, seed: int, **kwargs) -> gym.vector.VectorEnv:
    """`num_envs` synchronous copies (env i seeded seed + i), autoreset with the final observation in infos."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    return envs


@torch.no_grad()
def evaluate(act: Callable[[np.ndarray], Any], env_id: str, episodes: int = 20, seed: int = 1000,
             **kwargs) -> list[float]:
    """Returns of `episodes` episodes of the deterministic policy `act(obs) -> action` (episode i reset with
    seed + i, the same seeds as the benchmark anchors)."""
    env = gym.make(env_id, **kwargs)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            total += float(r)
            done = term or trunc
        returns.append(total)
    env.close()
    return returns


class SolvedTracker:
    """Records training-episode returns; `solved_at` is the first env step at which the mean of the last
    `window` returns reached `threshold` (the benchmark's "steps to solve")."""

    def __init__(self, threshold: float | None, window: int = 20):
        self.threshold, self.window = threshold, window
        self.returns: list[float] = []
        self.recent: deque = deque(maxlen=window)
        self.solved_at: int | None = None

    def add(self, episode_return: float, step: int) -> None:
        self.returns.append(float(episode_return))
        self.recent.append(float(episode_return))
        if (self.solved_at is None and self.threshold is not None and len(self.recent) == self.window
                and np.mean(self.recent) >= self.threshold):
            self.solved_at = int(step)

    @property
    def mean_recent(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")


def flat_parameters(*modules: torch.nn.Module) -> torch.nn.Parameter:
    """One contiguous parameter (and gradient) whose slices are the modules' parameters (and .grad), so that
    the optimizer step and gradient clipping are one fused op each instead of one per tensor; for a tiny MLP
    their per-tensor overhead is a sizeable part of an update. Optimize the returned parameter, and zero its
    gradient with zero_grad(set_to_none=False): backward then accumulates into the slices in place."""
    params = [p for m in modules for p in m.parameters()]
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    view_parameters(params, flat.data, flat.grad)
    return flat


def view_parameters(params, flat: Tensor, grad: Tensor, offset: int = 0) -> None:
    """Make each parameter (and its .grad) the next slice of `flat` (and `grad`), from `offset` on."""
    for p in params:
        n = p.numel()
        p.data, p.grad = flat[offset:offset + n].view_as(p), grad[offset:offset + n].view_as(p)
        offset += n


def clip_grad_norm_flat_(flat: torch.nn.Parameter, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ for one (flat) parameter in two ops: scale its gradient by
    min(1, max_norm / (||g|| + 1e-6)); returns ||g|| before clipping."""
    norm = torch.linalg.vector_norm(flat.grad)
    flat.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm


def save_agent(path: str, modules: dict[str, torch.nn.Module], config: Any, extra: dict | None = None) -> None:
    """Save the agent's networks (state dicts) and its dataclass config to the directory `path`, atomically."""
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, ".agent.pt.tmp")
    # clone: a network on flat_parameters would otherwise save the whole shared buffer with each tensor
    state = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in modules.items()}
    torch.save(state | {"_extra": extra or {}}, tmp)
    os.replace(tmp, os.path.join(path, "agent.pt"))
    atomic_write_text(os.path.join(path, "config.json"),
                      json.dumps({"class": type(config).__name__, **config_dict(config)}, indent=2))


def load_config(path: str, cls: type) -> Any:
    """Rebuild the dataclass config saved by `save_agent`; unknown keys are an error naming them."""
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    raw.pop("class", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}/config.json has fields {unknown} that {cls.__name__} does not know")
    return cls(**raw)


def load_modules(path: str, modules: dict[str, torch.nn.Module]) -> dict:
    """Load state dicts saved by `save_agent` into `modules`; returns the saved `extra` dict."""
    state = torch.load(os.path.join(path, "agent.pt"), map_location="cpu", weights_only=False)
    for k, m in modules.items():
        if k not in state:
            raise KeyError(f"{path}/agent.pt has no module {k!r} (it has {sorted(state)})")
        m.load_state_dict(state[k])
    return state.get("_extra", {})
