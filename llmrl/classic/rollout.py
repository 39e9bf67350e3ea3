"""On-policy data collection and run bookkeeping shared by REINFORCE, A2C, PPO and TRPO.

- `RolloutCollector`: T steps of each of N vectorized envs into preallocated (N, T) tensors (time axis last, as
  `llmrl.objectives` expects), with V(s_{t+1}) for bootstrapping: at a time-limit truncation it is
  V(final_obs), at a termination the `terminated` flag makes gae / n_step_returns ignore it.
- `EpisodeCollector`: whole episodes for Monte-Carlo REINFORCE, padded to (N, T) with a mask.
- `OnPolicyConfig` / `OnPolicyRun`: the config fields and the seeding, logging, solved tracking, final
  evaluation and save that every on-policy agent shares.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..utils import RunLogger, seed_everything
from .common import SolvedTracker, evaluate, save_agent
from .policies import ACTIVATIONS, Actor, Critic


@dataclass
class OnPolicyConfig:
    """Fields shared by the on-policy agents (each agent's config adds its own)."""

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=0, metadata={"help": "seed of torch, numpy and the envs (env i gets seed + i)"})
    total_steps: int = field(default=100_000, metadata={"help": "env steps to train for (summed over envs)"})
    num_envs: int = field(default=8, metadata={"help": "parallel envs (gymnasium SyncVectorEnv)"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "clip the global gradient norm (<= 0: off)"})
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64],
                                    metadata={"help": "hidden layer widths of the actor and of the critic"})
    activation: str = field(default="tanh", metadata={"help": "hidden activation: tanh | relu"})
    log_std_init: float = field(default=0.0, metadata={"help": "initial log-std of a Gaussian policy"})
    solved_threshold: Optional[float] = field(
        default=None, metadata={"help": "mean return of the last 20 episodes that counts as solved "
                                        "(default: the env's reward_threshold; CartPole-v1: 475)"})
    eval_episodes: int = field(default=20, metadata={"help": "deterministic evaluation episodes at the end"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation episode i is reset with eval_seed + i"})
    run_dir: str = field(default="runs/pg", metadata={"help": "metrics.jsonl, TensorBoard and agent/ go here"})
    save: bool = field(default=True, metadata={"help": "save the trained agent to RUN_DIR/agent"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard scalars"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    torch_threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest for tiny MLPs)"})

    def __post_init__(self):
        for name, low in (("total_steps", 1), ("num_envs", 1), ("eval_episodes", 0), ("torch_threads", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")


class OnPolicyRun:
    """Seeds and threads, the solved tracker, metrics log and progress bar of one run; `finish` evaluates the
    deterministic policy, saves the agent and returns the run's summary."""

    def __init__(self, cfg: OnPolicyConfig):
        self.cfg = cfg
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        threshold = cfg.solved_threshold
        if threshold is None:
            threshold = gym.spec(cfg.env_id).reward_threshold
        self.tracker = SolvedTracker(threshold)
        self.logger = RunLogger(cfg.run_dir, tensorboard=cfg.tensorboard)
        self.pbar = tqdm(total=cfg.total_steps, disable=not cfg.progress, unit="step", dynamic_ncols=True)
        self.step = 0  # env steps so far, summed over envs
        self.start()

    def start(self) -> None:
        """Start the clocks at the training loop, after imports and setup (the SB3 anchor times only learn())."""
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def add_steps(self, n: int) -> None:
        self.step += n
        self.pbar.update(n)

    def episode(self, episode_return: float, length: int) -> None:
        self.tracker.add(episode_return, self.step)
        self.logger.log({"episode_return": float(episode_return), "episode_length": int(length)}, self.step)

    def log(self, metrics: dict) -> None:
        """Per-update metrics, with the mean return of the last 20 episodes and env steps per second."""
        metrics = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        recent = self.tracker.mean_recent
        self.logger.log(metrics | {"mean_return_20": recent,
                                   "steps_per_s": self.step / (time.perf_counter() - self.t0)}, self.step)
        self.pbar.set_postfix(ret20=f"{recent:.1f}", refresh=False)

    def finish(self, actor: Actor, modules: dict[str, torch.nn.Module], extra: dict | None = None) -> dict:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        self.pbar.close()
        cfg = self.cfg
        returns = evaluate(actor.act, cfg.env_id, cfg.eval_episodes, cfg.eval_seed) if cfg.eval_episodes else []
        if cfg.save:
            save_agent(os.path.join(cfg.run_dir, "agent"), modules, cfg, extra)
        result = {"env_id": cfg.env_id, "seed": cfg.seed, "total_steps": self.step, "wall_s": round(wall, 2),
                  "cpu_s": round(cpu, 2), "steps_to_solve": self.tracker.solved_at,
                  "final_mean_return_20": self.tracker.mean_recent, "episodes": len(self.tracker.returns),
                  "eval_mean_return": float(np.mean(returns)) if returns else None}
        self.logger.log({k: v for k, v in result.items() if isinstance(v, (int, float))}, self.step)
        self.logger.close()
        return result


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
                 run: OnPolicyRun, seed: int):
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

    def __init__(self, envs: list[gym.Env], actor: Actor, run: OnPolicyRun, seed: int):
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
