"""Environments of the deep gym agents (DQN family, policy-gradient family) and the deterministic evaluation of a
trained policy.

Truncation rule used by every agent: at a time-limit truncation the next state's value is bootstrapped
(`terminated` = 0, the episode is still "done"); only a true termination zeroes it.
"""
from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch


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
