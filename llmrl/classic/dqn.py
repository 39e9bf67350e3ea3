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
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from ..objectives import double_q_values, huber_loss, td_target
from ..utils import RunLogger, seed_everything
from .common import SolvedTracker, evaluate, load_config, load_modules, make_vec_env, save_agent
from .qnets import QNetwork
from .replay import PrioritizedReplayBuffer, ReplayBuffer
from .td import linear_schedule


@dataclass
class DQNConfig:
    """Configuration of `train_dqn`. The defaults are the combined agent (Double + Dueling + PER + Noisy Nets +
    5-step returns) tuned to solve CartPole-v1 within 50k env steps; each switch turns one variant off or on
    (plain DQN, Algorithm 6: all four switches off and n_step=1)."""

    env_id: str = field(default="CartPole-v1", metadata={"help": "Gymnasium env id (discrete actions)."})
    seed: int = field(default=1, metadata={"help": "Seed of torch, numpy, the env resets and the replay sampling."})
    total_timesteps: int = field(default=50_000, metadata={"help": "Env steps to train for (all envs)."})
    num_envs: int = field(default=1, metadata={"help": "Synchronous env copies stepped together."})
    # Variants (each combines freely with the others).
    double: bool = field(default=True, metadata={
        "help": "Double DQN: the online net picks argmax_a Q(s',a), the target net evaluates it (van Hasselt 2016)."})
    dueling: bool = field(default=True, metadata={
        "help": "Dueling head Q = V + A - mean A (Wang 2016)."})
    prioritized: bool = field(default=True, metadata={
        "help": "Proportional prioritized experience replay with IS weights (Schaul 2016)."})
    noisy: bool = field(default=True, metadata={
        "help": "Noisy Nets: factorized Gaussian NoisyLinear layers explore instead of epsilon (Fortunato 2018)."})
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
    # Evaluation, logging, saving.
    solved_threshold: Optional[float] = field(default=475.0, metadata={
        "help": "Record the first env step where the mean of the last 20 training returns reaches this."})
    eval_episodes: int = field(default=20, metadata={"help": "Deterministic evaluation episodes after training."})
    eval_seed: int = field(default=1000, metadata={"help": "Evaluation episode i is reset with eval_seed + i."})
    eval_interval: int = field(default=0, metadata={
        "help": "Also evaluate (eval_episodes, deterministic) every this many env steps during training (0 = off)."})
    run_dir: Optional[str] = field(default=None, metadata={
        "help": "Write metrics.jsonl, TensorBoard scalars and the trained agent here (None = write nothing)."})
    tensorboard: bool = field(default=True, metadata={"help": "Also write TensorBoard scalars under run_dir/tb."})
    log_interval: int = field(default=100, metadata={"help": "Log the loss every this many gradient steps."})
    progress_bar: bool = field(default=False, metadata={"help": "Show a tqdm progress bar over env steps."})
    torch_threads: int = field(default=1, metadata={
        "help": "torch CPU threads while training (1 is fastest for small MLPs; 0 = leave torch's setting)."})

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "n_step", "buffer_size", "batch_size", "train_freq",
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
        if self.torch_threads < 0:
            raise ValueError(f"DQNConfig.torch_threads must be >= 0, got {self.torch_threads}")
        if self.eval_interval and self.eval_episodes < 1:
            raise ValueError(f"DQNConfig.eval_interval={self.eval_interval} needs eval_episodes >= 1")


class DQNAgent:
    """A trained Q-network and its config: greedy `act`, `q_values`, `save`/`load`. Acting is deterministic
    (the network is in eval mode, so noisy layers use their means)."""

    def __init__(self, q_net: QNetwork, config: DQNConfig):
        self.q_net, self.config = q_net.eval(), config

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, .) for one observation (obs_dim,) -> (A,) or a batch (B, obs_dim) -> (B, A)."""
        return self.q_net(torch.as_tensor(np.asarray(obs), dtype=torch.float32)).numpy()

    def act(self, obs: np.ndarray) -> int:
        """The greedy action argmax_a Q(s, a) for one observation."""
        return int(self.q_values(obs).argmax())

    def save(self, path: str) -> None:
        """Save the Q-network weights and the config to the directory `path`."""
        save_agent(path, {"q_net": self.q_net}, self.config,
                   extra={"obs_dim": self.q_net.obs_dim, "n_actions": self.q_net.n_actions})

    @classmethod
    def load(cls, path: str) -> "DQNAgent":
        """Rebuild an agent saved by `save`."""
        config = load_config(path, DQNConfig)
        extra = torch.load(os.path.join(path, "agent.pt"), map_location="cpu", weights_only=False)["_extra"]
        q_net = build_q_network(config, extra["obs_dim"], extra["n_actions"])
        load_modules(path, {"q_net": q_net})
        return cls(q_net, config)


def build_q_network(cfg: DQNConfig, obs_dim: int, n_actions: int) -> QNetwork:
    return QNetwork(obs_dim, n_actions, cfg.hidden_sizes, dueling=cfg.dueling, noisy=cfg.noisy,
                    sigma0=cfg.noisy_sigma0)


@dataclass
class DQNResult:
    """What `train_dqn` returns: the agent, the training episodes, the benchmark figures."""
    agent: DQNAgent
    episode_returns: list[float]
    episode_end_steps: list[int]  # env step at which each training episode ended
    solved_at: Optional[int]  # first env step where the mean of the last 20 returns reached solved_threshold
    eval_returns: list[float]  # deterministic evaluation after training
    wall_s: float  # training time (excludes setup and the final evaluation; includes eval_interval evaluations)
    env_steps: int
    gradient_steps: int
    evaluations: list[tuple[int, float]]  # (env step, mean deterministic return) every eval_interval steps


def train_dqn(cfg: DQNConfig) -> DQNResult:
    """Train a DQN-family agent on `cfg.env_id` (seed ch. 6, Algorithm 6, with the switches of `DQNConfig`)."""
    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: DQNConfig) -> DQNResult:
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # epsilon draws, random actions, replay sampling
    envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"DQNConfig.env_id={cfg.env_id!r} has action space {envs.single_action_space}; "
                         "DQN needs Discrete actions")
    if len(envs.single_observation_space.shape or ()) != 1:
        raise ValueError(f"DQNConfig.env_id={cfg.env_id!r} has observation space {envs.single_observation_space}; "
                         "the MLP Q-network needs flat (1-D Box) observations")
    obs_shape = envs.single_observation_space.shape
    n_actions = int(envs.single_action_space.n)

    q_net = build_q_network(cfg, obs_shape[0], n_actions)
    target_net = copy.deepcopy(q_net).requires_grad_(False)
    online_params, target_params = list(q_net.parameters()), list(target_net.parameters())
    # Fused/foreach kernels: one call for all parameter tensors, which is most of an update's cost on tiny MLPs.
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(q_net.parameters(), lr=cfg.learning_rate, fused=True)
    else:
        optimizer = torch.optim.RMSprop(q_net.parameters(), lr=cfg.learning_rate, foreach=True)
    if cfg.prioritized:
        buffer = PrioritizedReplayBuffer(cfg.buffer_size, obs_shape, cfg.num_envs, cfg.n_step, cfg.gamma,
                                         alpha=cfg.per_alpha, eps=cfg.per_eps)
    else:
        buffer = ReplayBuffer(cfg.buffer_size, obs_shape, cfg.num_envs, cfg.n_step, cfg.gamma)

    logger = RunLogger(cfg.run_dir, tensorboard=cfg.tensorboard) if cfg.run_dir else None
    tracker = SolvedTracker(cfg.solved_threshold)
    episode_end_steps: list[int] = []
    evaluations: list[tuple[int, float]] = []
    pbar = tqdm(total=cfg.total_timesteps, disable=not cfg.progress_bar, desc=f"dqn {cfg.env_id}", unit="step")
    grad_step, global_step, epsilon, beta = 0, 0, 0.0, cfg.per_beta0
    epsilon_schedule = linear_schedule(cfg.exploration_initial_eps, cfg.exploration_final_eps,
                                       max(1, int(cfg.exploration_fraction * cfg.total_timesteps)))
    beta_schedule = linear_schedule(cfg.per_beta0, 1.0, max(1, cfg.total_timesteps))  # PER IS exponent -> 1
    t0 = time.perf_counter()

    obs, _ = envs.reset(seed=cfg.seed)
    for iteration in range(1, cfg.total_timesteps // cfg.num_envs + 1):
        # 1. Act: uniformly at random until learning starts (as SB3), then epsilon-greedy on Q, or greedy on the
        # noisy Q, whose weight noise is the exploration (the noise of the last update: between updates the agent
        # acts with one fixed set of weights, as in Fortunato 2018).
        if global_step < cfg.learning_starts:
            epsilon = 1.0
        elif cfg.noisy:
            epsilon = 0.0
        else:
            epsilon = epsilon_schedule(global_step)
        explore = rng.random(cfg.num_envs) < epsilon
        if explore.all():
            actions = rng.integers(0, n_actions, size=cfg.num_envs)
        else:
            with torch.no_grad():
                actions = q_net(torch.from_numpy(obs).float()).argmax(dim=-1).numpy()
            actions = np.where(explore, rng.integers(0, n_actions, size=cfg.num_envs), actions)

        # 2. Step and store. At an episode end the vector env has already reset `next_obs`; the transition needs
        # the true final observation, whose value is bootstrapped after a truncation (terminated = 0).
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        global_step += cfg.num_envs
        real_next_obs = next_obs
        if "_final_obs" in infos and infos["_final_obs"].any():
            real_next_obs = next_obs.copy()
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        buffer.add(obs, actions, rewards, real_next_obs, terminated, truncated)
        obs = next_obs

        if "_episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ret, length = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                tracker.add(ret, global_step)
                episode_end_steps.append(global_step)
                if logger:
                    logger.log({"episode_return": ret, "episode_length": length, "epsilon": epsilon}, global_step)
            pbar.set_postfix(ret20=f"{tracker.mean_recent:.1f}", refresh=False)
        pbar.update(cfg.num_envs)
        if cfg.eval_interval and global_step // cfg.eval_interval > len(evaluations):
            mean_return = float(np.mean(evaluate(DQNAgent(q_net, cfg).act, cfg.env_id, cfg.eval_episodes,
                                                 cfg.eval_seed)))
            q_net.train()  # DQNAgent switched it to eval mode (noise off) for the evaluation
            evaluations.append((global_step, mean_return))
            if logger:
                logger.log({"eval_mean_return": mean_return}, global_step)

        # 3. Learn: `gradient_steps` updates every `train_freq` steps once `learning_starts` steps are stored.
        if global_step <= cfg.learning_starts or iteration % cfg.train_freq != 0:
            continue
        for _ in range(cfg.gradient_steps):
            beta = beta_schedule(global_step)
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

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(online_params, cfg.max_grad_norm)
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
            if logger and grad_step % cfg.log_interval == 0:
                logger.log({"loss": loss.item(), "q_mean": q.mean().item(),
                            "td_abs_mean": td_error.abs().mean().item(), "beta": beta,
                            "sps": global_step / (time.perf_counter() - t0)}, global_step)

    wall_s = time.perf_counter() - t0
    pbar.close()
    envs.close()
    agent = DQNAgent(q_net, cfg)
    eval_returns = evaluate(agent.act, cfg.env_id, cfg.eval_episodes, cfg.eval_seed) if cfg.eval_episodes else []
    if logger:
        if eval_returns:
            logger.log({"eval_mean_return": float(np.mean(eval_returns))}, global_step)
        logger.close()
        agent.save(cfg.run_dir)
    return DQNResult(agent=agent, episode_returns=tracker.returns, episode_end_steps=episode_end_steps,
                     solved_at=tracker.solved_at, eval_returns=eval_returns, wall_s=wall_s, env_steps=global_step,
                     gradient_steps=grad_step, evaluations=evaluations)
