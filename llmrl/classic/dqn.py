"""DQN (Mnih 2015; seed ch. 6, Algorithm 6) with switches for Double DQN, prioritized replay, the dueling head,
noisy nets and k-step returns, on gymnasium environments with discrete actions.

`train_dqn(cfg)` reads top to bottom: act epsilon-greedily (or with noisy weights) -> store the transition
(bootstrapping through time-limit truncations) -> every `train_freq` steps run `gradient_steps` updates:
sample -> TD target -> Huber loss -> Adam/RMSProp step -> priorities -> target-network update -> log.
The math (TD targets, Double-DQN bootstrap, Huber loss, dueling aggregation, PER weights) is in
`llmrl.objectives`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..objectives import double_q_values, huber_loss, td_target
from .common import evaluate, make_vec_env
from .qnets import QNetwork
from .replay import PrioritizedReplayBuffer, ReplayBuffer
from .run import Run, RunConfig, RunResult
from .schedules import linear_schedule


@dataclass
class DQNConfig(RunConfig):
    """Configuration of `train_dqn`. The defaults are the combined agent (Double + Dueling + PER + Noisy Nets +
    5-step returns) tuned to solve CartPole-v1 within 50k env steps; each switch turns one variant off or on
    (plain DQN, Algorithm 6: all four switches off and n_step=1)."""

    ALIASES: ClassVar[dict[str, str]] = {"n_envs": "num_envs"}  # Stable-Baselines3's name

    total_timesteps: int = field(default=50_000, metadata={"help": "Env steps to train for (all envs)."})
    output_dir: str = field(default="runs/dqn", metadata={"help": "metrics, TensorBoard logs and agent/ go here"})
    num_envs: int = field(default=1, metadata={"help": "Synchronous env copies stepped together."})
    # Variants (each combines freely with the others).
    double: bool = field(default=True, metadata={
        "help": "Double DQN: the online net picks argmax_a Q(s',a), the target net evaluates it (van Hasselt 2016).",
        "help_off": "The DQN target: the target net both picks and evaluates max_a Q(s',a)."})
    dueling: bool = field(default=True, metadata={
        "help": "Dueling head Q = V + A - mean A (Wang 2016).", "help_off": "One linear head for Q(s, .)."})
    prioritized: bool = field(default=True, metadata={
        "help": "Proportional prioritized experience replay with IS weights (Schaul 2016).",
        "help_off": "Uniform replay: every stored transition equally likely, no IS weights."})
    noisy: bool = field(default=True, metadata={
        "help": "Noisy Nets: factorized Gaussian NoisyLinear layers explore instead of epsilon (Fortunato 2018).",
        "help_off": "Plain linear layers; epsilon-greedy exploration (the exploration_* settings)."})
    n_step: int = field(default=5, metadata={"help": "k of the k-step return target (1 = one-step DQN target)."})
    # Network and optimizer.
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128], metadata={"help": "MLP hidden widths."})
    optimizer: str = field(default="adam", metadata={"help": "'adam' or 'rmsprop' (the 2015 paper's optimizer)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Optimizer step size."})
    max_grad_norm: float = field(default=10.0, metadata={"help": "Clip the global gradient norm to this value."})
    huber_delta: float = field(default=1.0, metadata={"help": "Huber loss threshold delta (seed eq. 12)."})
    # Replay and the update schedule. With the defaults a round is 16 updates on fixed targets, then a target
    # refresh: ~760 Bellman backups of 5 steps each in 50k env steps. That horizon is what CartPole-v1 needs: with
    # fewer backups (a target refresh every 1000 env steps) agents balance the pole but let the cart drift out of
    # bounds after ~300 steps, too far ahead for the values to see (measured while tuning these defaults).
    buffer_size: int = field(default=100_000, metadata={"help": "Replay capacity in transitions."})
    batch_size: int = field(default=64, metadata={"help": "Transitions per gradient step."})
    gamma: float = field(default=0.99, metadata={"help": "Discount factor."})
    learning_starts: int = field(default=1_000, metadata={"help": "Env steps of pure collection before training."})
    train_freq: int = field(default=64, metadata={"help": "Run the updates every this many env steps (per env)."})
    gradient_steps: int = field(default=16, metadata={"help": "Gradient steps per update round."})
    target_update_interval: int = field(default=16, metadata={
        "help": "Update the target network every this many gradient steps (C of Algorithm 6)."})
    tau: float = field(default=1.0, metadata={
        "help": "Target update theta' <- tau theta + (1 - tau) theta' (1 = hard copy, < 1 = Polyak averaging)."})
    # Exploration (epsilon-greedy; unused with noisy nets).
    exploration_initial_eps: float = field(default=1.0, metadata={"help": "Epsilon at step 0."})
    exploration_final_eps: float = field(default=0.04, metadata={"help": "Epsilon after the annealing."})
    exploration_fraction: float = field(default=0.16, metadata={
        "help": "Fraction of total_timesteps over which epsilon is annealed linearly."})
    noisy_sigma0: float = field(default=0.5, metadata={"help": "NoisyLinear sigma init sigma0 / sqrt(fan_in)."})
    # Prioritized replay.
    per_alpha: float = field(default=0.6, metadata={"help": "PER priority exponent alpha (0 = uniform)."})
    per_beta0: float = field(default=0.4, metadata={"help": "PER IS exponent beta at step 0 (annealed to 1)."})
    per_eps: float = field(default=1e-6, metadata={"help": "PER priority offset: p = |delta| + eps."})
    # Logging.
    eval_interval: int = field(default=0, metadata={
        "help": "Also evaluate (eval_episodes, deterministic) every this many env steps during training (0 = off)."})
    log_interval: int = field(default=100, metadata={"help": "Log the loss every this many gradient steps."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_envs", "n_step", "buffer_size", "batch_size", "train_freq",
                     "gradient_steps", "target_update_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"DQNConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"DQNConfig.optimizer must be 'adam' or 'rmsprop', got {self.optimizer!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"DQNConfig.gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"DQNConfig.tau must be in (0, 1], got {self.tau}")
        for name in ("exploration_initial_eps", "exploration_final_eps", "exploration_fraction", "per_beta0"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DQNConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"DQNConfig.batch_size ({self.batch_size}) exceeds buffer_size ({self.buffer_size})")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"DQNConfig.hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.eval_interval and self.eval_episodes < 1:
            raise ValueError(f"DQNConfig.eval_interval={self.eval_interval} needs eval_episodes >= 1")

    def build_networks(self, env: gym.Env | gym.vector.VectorEnv) -> dict[str, nn.Module]:
        """{"q_net": Q(s, .)} for the env's spaces: Discrete actions, flat (1-D Box) observations."""
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        if not isinstance(act_space, gym.spaces.Discrete):
            raise ValueError(f"env_id={self.env_id!r} has action space {act_space}; DQN needs Discrete actions")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"env_id={self.env_id!r} has observation space {obs_space}; the MLP Q-network needs "
                             "flat (1-D Box) observations")
        return {"q_net": QNetwork(obs_space.shape[0], int(act_space.n), self.hidden_sizes, dueling=self.dueling,
                                  noisy=self.noisy, sigma0=self.noisy_sigma0)}


def train_dqn(cfg: DQNConfig) -> RunResult:
    """Train a DQN-family agent on `cfg.env_id` (seed ch. 6, Algorithm 6, with the switches of `DQNConfig`);
    the trained agent and the run's figures (info: gradient_steps, and the evaluations every eval_interval)."""
    with Run(cfg) as run:
        rng = np.random.default_rng(cfg.seed)  # epsilon draws, random actions, replay sampling
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        q_net = networks["q_net"]
        target_net = copy.deepcopy(q_net).requires_grad_(False)
        online_params, target_params = list(q_net.parameters()), list(target_net.parameters())
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(online_params, lr=cfg.learning_rate, fused=True)
        else:
            optimizer = torch.optim.RMSprop(online_params, lr=cfg.learning_rate, foreach=True)
        obs_shape, n_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
        if cfg.prioritized:
            buffer = PrioritizedReplayBuffer(cfg.buffer_size, obs_shape, cfg.num_envs, cfg.n_step, cfg.gamma,
                                             alpha=cfg.per_alpha, eps=cfg.per_eps)
        else:
            buffer = ReplayBuffer(cfg.buffer_size, obs_shape, cfg.num_envs, cfg.n_step, cfg.gamma)
        epsilon_schedule = linear_schedule(cfg.exploration_initial_eps, cfg.exploration_final_eps,
                                           max(1, int(cfg.exploration_fraction * cfg.total_timesteps)))
        beta_schedule = linear_schedule(cfg.per_beta0, 1.0, max(1, cfg.total_timesteps))  # PER IS exponent -> 1
        evaluations: list[tuple[int, float]] = []
        grad_step, epsilon, beta = 0, 0.0, cfg.per_beta0

        run.start()
        obs, _ = envs.reset(seed=cfg.seed)
        for iteration in range(1, cfg.total_timesteps // cfg.num_envs + 1):
            # 1. Act: uniformly at random until learning starts (as SB3), then epsilon-greedy on Q, or greedy on
            # the noisy Q, whose weight noise is the exploration (the noise of the last update: between updates
            # the agent acts with one fixed set of weights, as in Fortunato 2018).
            if run.step < cfg.learning_starts:
                epsilon = 1.0
            elif cfg.noisy:
                epsilon = 0.0
            else:
                epsilon = epsilon_schedule(run.step)
            explore = rng.random(cfg.num_envs) < epsilon
            if explore.all():
                actions = rng.integers(0, n_actions, size=cfg.num_envs)
            else:
                with torch.no_grad():
                    actions = q_net(torch.from_numpy(obs).float()).argmax(dim=-1).numpy()
                actions = np.where(explore, rng.integers(0, n_actions, size=cfg.num_envs), actions)

            # 2. Step and store. At an episode end the vector env has already reset `next_obs`; the transition
            # needs the true final observation, whose value is bootstrapped after a truncation (terminated = 0).
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            run.add_steps(cfg.num_envs)
            real_next_obs = next_obs
            if "_final_obs" in infos and infos["_final_obs"].any():
                real_next_obs = next_obs.copy()
                for i in np.flatnonzero(infos["_final_obs"]):
                    real_next_obs[i] = infos["final_obs"][i]
            buffer.add(obs, actions, rewards, real_next_obs, terminated, truncated)
            obs = next_obs
            if "_episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    run.episode(infos["episode"]["r"][i], infos["episode"]["l"][i], epsilon=epsilon)
            if cfg.eval_interval and run.step // cfg.eval_interval > len(evaluations):
                mean_return = float(np.mean(evaluate(q_net.act, cfg.env_id, cfg.eval_episodes, cfg.eval_seed)))
                evaluations.append((run.step, mean_return))
                run.log({"eval_mean_return": mean_return})

            # 3. Learn: `gradient_steps` updates every `train_freq` steps once `learning_starts` steps are stored.
            if run.step <= cfg.learning_starts or iteration % cfg.train_freq != 0:
                continue
            for _ in range(cfg.gradient_steps):
                beta = beta_schedule(run.step)
                if cfg.prioritized:
                    batch = buffer.sample(cfg.batch_size, rng, beta)
                else:
                    batch = buffer.sample(cfg.batch_size, rng)
                if cfg.noisy:  # a fresh noise sample per update, independent for the two networks (Fortunato 2018)
                    q_net.reset_noise()
                    target_net.reset_noise()

                # TD target y = r + gamma^m (1 - terminated) Q_target(s', a*), a* from the online net if Double.
                with torch.no_grad():
                    next_q_target = target_net(batch.next_obs)
                    if cfg.double:
                        next_v = double_q_values(q_net(batch.next_obs), next_q_target)
                    else:
                        next_v = next_q_target.max(dim=-1).values
                    y = td_target(batch.rewards, next_v, batch.terminated, batch.discounts)

                q = q_net(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
                td_error = y - q
                # The IS weights correct prioritized sampling's bias (all ones with uniform replay).
                loss = (batch.weights * huber_loss(td_error, cfg.huber_delta)).mean()

                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(online_params, cfg.max_grad_norm, foreach=True)
                optimizer.step()
                grad_step += 1

                if cfg.prioritized:
                    buffer.update_priorities(batch.indices, td_error.detach())
                if grad_step % cfg.target_update_interval == 0:
                    with torch.no_grad():  # theta' <- theta' + tau (theta - theta'); tau = 1 copies exactly
                        for target_p, online_p in zip(target_params, online_params):
                            if cfg.tau == 1.0:
                                target_p.copy_(online_p)
                            else:
                                target_p.lerp_(online_p, cfg.tau)
                if grad_step % cfg.log_interval == 0:
                    run.log({"loss": loss, "q_mean": q.mean(), "td_abs_mean": td_error.abs().mean(), "beta": beta})
        envs.close()
        return run.finish(networks, info={"gradient_steps": grad_step, "evaluations": evaluations})
