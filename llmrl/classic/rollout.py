"""On-policy data collection shared by REINFORCE, A2C, PPO and TRPO.

- `RolloutCollector`: T steps of each of N vectorized envs into preallocated (N, T) tensors (time axis last, as
  `llmrl.objectives` expects), with V(s_{t+1}) for bootstrapping: at a time-limit truncation it is
  V(final_obs), at a termination the `terminated` flag makes gae / n_step_returns ignore it.
- `EpisodeCollector`: whole episodes for Monte-Carlo REINFORCE, padded to (N, T) with a mask.

Both count env steps and finished episodes into the agent's `Run` (llmrl/classic/run.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from .policies import Actor, Critic
from .run import Run


@dataclass
class Rollout:
    """T steps of N envs, each tensor (N, T, ...): step t of env i saw obs[i, t], took actions[i, t] with
    log-prob logp[i, t] under distribution parameters dist_params[i, t], valued values[i, t] = V(s_t), got
    rewards[i, t]; next_values[i, t] = V(s_{t+1}) (V(final_obs) at a truncation, 0 at a termination)."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    dist_params: Tensor
    values: Tensor
    rewards: Tensor
    dones: Tensor
    terminated: Tensor
    next_values: Tensor

    def flat(self) -> "Rollout":
        """The same data with the (N, T) axes merged into one batch axis of N * T rows (for minibatches)."""
        return Rollout(**{f.name: getattr(self, f.name).flatten(0, 1) for f in dataclasses.fields(self)})

    def rows(self, idx: Tensor) -> "Rollout":
        """Rows `idx` of a flat rollout (a minibatch)."""
        return Rollout(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


class RolloutCollector:
    """Collects `num_steps` steps of every env of `envs` with the current actor, valuing states with `critic`.

    The envs keep running across calls (a rollout window may cut an episode; the cut is bootstrapped with
    V(s_T) by gae / n_step_returns, which is not a `done`).
    """

    def __init__(self, envs: gym.vector.VectorEnv, actor: Actor, critic: Critic, num_steps: int,
                 run: Run, seed: int):
        self.envs, self.actor, self.critic, self.run = envs, actor, critic, run
        N, T = envs.num_envs, num_steps
        obs_shape, act_shape = envs.single_observation_space.shape, envs.single_action_space.shape
        with torch.no_grad():
            n_params = actor(torch.zeros(obs_shape)).shape[-1]
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(N, T, *shape, dtype=dtype)  # noqa: E731
        self.buffer = Rollout(obs=zeros(*obs_shape), actions=zeros(*act_shape, dtype=torch.long if actor.discrete
                                                                   else torch.float32),
                              logp=zeros(), dist_params=zeros(n_params), values=zeros(), rewards=zeros(),
                              dones=zeros(), terminated=zeros(), next_values=zeros())
        obs, _ = envs.reset(seed=seed)
        self.obs = torch.as_tensor(obs, dtype=torch.float32)

    @torch.no_grad()
    def collect(self) -> Rollout:
        b, envs, actor, critic = self.buffer, self.envs, self.actor, self.critic
        # Per-step results go to lists and are stacked into the (N, T) buffer once at the end (fewer small ops).
        obs, actions, dist_params, rewards, terminated, truncated = ([] for _ in range(6))
        truncations = []  # (env indices, t, final observations) of the steps cut by a time limit
        for t in range(b.rewards.shape[1]):
            params = actor(self.obs)
            action = actor.sample(params)
            obs.append(self.obs)
            actions.append(action)
            dist_params.append(params)
            next_obs, reward, term, trunc, info = envs.step(actor.env_action(action))
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
            cut = trunc & ~term
            if cut.any():  # SAME_STEP autoreset: next_obs is already the next episode's first observation
                truncations.append((np.flatnonzero(cut), t, np.stack(info["final_obs"][cut])))
            self.run.add_steps(envs.num_envs)
            if "_episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    self.run.episode(info["episode"]["r"][i], info["episode"]["l"][i])
            self.obs = torch.as_tensor(next_obs, dtype=torch.float32)
        for name, steps in (("obs", obs), ("actions", actions), ("dist_params", dist_params)):
            torch.stack(steps, dim=1, out=getattr(b, name))
        b.logp.copy_(actor.log_prob(b.dist_params, b.actions))  # log pi_old(a_t|s_t), from the stored parameters
        terminated, truncated = np.stack(terminated, axis=1), np.stack(truncated, axis=1)
        b.rewards.copy_(torch.from_numpy(np.stack(rewards, axis=1)))
        b.terminated.copy_(torch.from_numpy(terminated))
        b.dones.copy_(torch.from_numpy(terminated | truncated))
        # The critic does not change during collection, so it values the whole window in one batched call.
        # V(s_{t+1}) is the next step's V(s_t) inside the window and V(s_T) at its end; done steps are fixed
        # below (truncation: V(final_obs)) or zeroed (termination).
        b.values.copy_(critic(b.obs))
        b.next_values[:, :-1] = b.values[:, 1:]
        b.next_values[:, -1] = critic(self.obs)
        if truncations:
            finals = critic(torch.as_tensor(np.concatenate([f for _, _, f in truncations]), dtype=torch.float32))
            envs_idx = torch.as_tensor(np.concatenate([i for i, _, _ in truncations]))
            steps_idx = torch.as_tensor(np.concatenate([np.full(len(i), t) for i, t, _ in truncations]))
            b.next_values[envs_idx, steps_idx] = finals
        b.next_values.mul_(1.0 - b.terminated)
        return b


@dataclass
class EpisodeBatch:
    """N complete episodes padded to the longest, T: tensors (N, T, ...); mask[i, t] = 1 on real steps,
    dones[i, t] = 1 on each episode's last step, terminated[i, t] = 1 where that end was a true termination."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    dones: Tensor
    terminated: Tensor

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1).long()


class EpisodeCollector:
    """Runs exactly `num_episodes` complete episodes per call with the current actor on a list of envs, each
    env taking the next episode when its own ends; every episode starts under the same policy and is kept to
    its end, so the batch has no length bias (Monte-Carlo REINFORCE needs whole episodes)."""

    def __init__(self, envs: list[gym.Env], actor: Actor, run: Run, seed: int):
        self.envs, self.actor, self.run = envs, actor, run
        self.reset_seeds = [seed + i for i in range(len(envs))]  # each env's first reset is seeded, later ones not

    def _reset(self, i: int) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=self.reset_seeds[i])
        self.reset_seeds[i] = None
        return obs

    @torch.no_grad()
    def collect(self, num_episodes: int) -> EpisodeBatch:
        actor = self.actor
        episodes = [{"obs": [], "actions": [], "rewards": []} for _ in range(num_episodes)]
        ends = [False] * num_episodes  # terminated (True) or truncated (False)
        running = {}  # env index -> episode index
        obs = {}
        next_episode = 0
        for i in range(min(len(self.envs), num_episodes)):
            running[i], obs[i] = next_episode, self._reset(i)
            next_episode += 1
        while running:
            active = list(running)
            x = torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32)
            actions = actor.sample(actor(x))
            env_actions = actor.env_action(actions)
            for j, i in enumerate(active):
                ep = episodes[running[i]]
                ep["obs"].append(x[j])
                ep["actions"].append(actions[j])
                obs[i], reward, terminated, truncated, info = self.envs[i].step(env_actions[j])
                ep["rewards"].append(float(reward))
                self.run.add_steps(1)
                if terminated or truncated:
                    ends[running[i]] = bool(terminated)
                    self.run.episode(info["episode"]["r"], info["episode"]["l"])
                    if next_episode < num_episodes:
                        running[i], obs[i] = next_episode, self._reset(i)
                        next_episode += 1
                    else:
                        del running[i]
        return self._pad(episodes, ends)

    @staticmethod
    def _pad(episodes: list[dict], ends: list[bool]) -> EpisodeBatch:
        N, T = len(episodes), max(len(ep["rewards"]) for ep in episodes)
        first_obs, first_action = episodes[0]["obs"][0], episodes[0]["actions"][0]
        batch = EpisodeBatch(obs=torch.zeros(N, T, *first_obs.shape),
                             actions=torch.zeros(N, T, *first_action.shape, dtype=first_action.dtype),
                             rewards=torch.zeros(N, T), mask=torch.zeros(N, T), dones=torch.zeros(N, T),
                             terminated=torch.zeros(N, T))
        for i, ep in enumerate(episodes):
            L = len(ep["rewards"])
            batch.obs[i, :L] = torch.stack(ep["obs"])
            batch.actions[i, :L] = torch.stack(ep["actions"])
            batch.rewards[i, :L] = torch.tensor(ep["rewards"])
            batch.mask[i, :L] = 1.0
            batch.dones[i, L - 1] = 1.0
            batch.terminated[i, L - 1] = float(ends[i])
        return batch
