"""The run convention every deep classic agent (DQN family, REINFORCE, A2C, PPO, TRPO) shares.

- `RunConfig`: the run's settings, named as in Stable-Baselines3 / gymnasium (`env_id`, `seed`,
  `total_timesteps`, `progress_bar`) and TRL (`output_dir`, `overwrite_output_dir`, `report_to`).
- `Run`: what a training loop does besides learning: refuses an output_dir that holds another run (before
  anything is written), sets torch's threads (restored at the end) and the seeds, logs episodes and metrics
  (OUTPUT_DIR/metrics.jsonl, TensorBoard under OUTPUT_DIR/tb), shows the progress bar, records when the agent
  solved the task, and `finish` evaluates the deterministic policy and saves the agent.
- One save layout, OUTPUT_DIR/agent/{agent.pt, config.json}, read back by `load_agent` into an `Agent`; every
  `train_*` returns a `RunResult`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..utils import RunLogger, atomic_write_text, config_dict, prepare_output_dir, seed_everything
from .common import evaluate
from .policies import ACTIVATIONS, build_actor_critic

REPORT_TO = ("tensorboard", "none")
RUN_FILES = ("metrics.jsonl", "tb", "agent")  # what a run writes into its output_dir


@dataclass
class RunConfig:
    """Settings of a run, shared by every deep classic agent (each agent's config adds its own fields)."""

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=0, metadata={"help": "seed of torch, numpy and the envs (env i gets seed + i)"})
    total_timesteps: int = field(default=100_000, metadata={
        "help": "env steps to train for, summed over envs (a rollout that crosses it is finished)"})
    output_dir: str = field(default="runs/classic", metadata={
        "help": "metrics.jsonl, TensorBoard logs (tb/) and the trained agent (agent/) go here"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start afresh in an output_dir that holds an earlier run (its files are deleted); without it "
                "such a start is an error"})
    save: bool = field(default=True, metadata={
        "help": "save the trained agent to OUTPUT_DIR/agent", "help_off": "do not save the trained agent"})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "tensorboard (scalars under OUTPUT_DIR/tb, beside metrics.jsonl) or none (metrics.jsonl only)"})
    progress_bar: bool = field(default=True, metadata={
        "help": "show a progress bar over env steps", "help_off": "no progress bar (for logs and batch jobs)"})
    torch_threads: int = field(default=1, metadata={
        "help": "torch CPU threads while training (restored afterwards): 1 is fastest for these small networks "
                "and is not slowed down by other jobs on a shared machine; 0 = leave torch's setting"})
    solved_threshold: Optional[float] = field(default=None, metadata={
        "help": "mean return of the last 20 training episodes that counts as solved (default: the env's "
                "reward_threshold; CartPole-v1: 475)"})
    eval_episodes: int = field(default=20, metadata={"help": "deterministic evaluation episodes after training"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation episode i is reset with eval_seed + i"})

    def __post_init__(self):
        if isinstance(self.report_to, str):  # as TRL: report_to="none" means ["none"]
            self.report_to = [self.report_to]
        for name, low in (("total_timesteps", 1), ("eval_episodes", 0), ("torch_threads", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        unknown = sorted(set(self.report_to) - set(REPORT_TO))
        if unknown:
            raise ValueError(f"report_to must list {' or '.join(REPORT_TO)}, got {unknown}")
        if not self.output_dir:
            raise ValueError("output_dir must be a directory path, got ''")

    def build_networks(self, env: gym.Env | gym.vector.VectorEnv) -> dict[str, nn.Module]:
        """The agent's networks for the env's spaces, by name (what `Agent.networks` holds)."""
        raise NotImplementedError


class SolvedTracker:
    """Records training-episode returns; `solved_at` is the first env step at which the mean of the last
    `window` returns reached `threshold` (the benchmark's "steps to solve")."""

    def __init__(self, threshold: float | None, window: int = 20):
        self.threshold, self.window = threshold, window
        self.returns: list[float] = []
        self.end_steps: list[int] = []
        self.recent: deque = deque(maxlen=window)
        self.solved_at: int | None = None

    def add(self, episode_return: float, step: int) -> None:
        self.returns.append(float(episode_return))
        self.end_steps.append(int(step))
        self.recent.append(float(episode_return))
        if (self.solved_at is None and self.threshold is not None and len(self.recent) == self.window
                and np.mean(self.recent) >= self.threshold):
            self.solved_at = int(step)

    @property
    def mean_recent(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")


@dataclass
class Agent:
    """A trained agent: its config and its networks by name ("actor" and "critic" for the policy-gradient
    agents, "q_net" for DQN), in eval mode. `act` is its deterministic policy (the mode of pi, or argmax Q)."""

    config: RunConfig
    networks: dict[str, nn.Module]

    def __post_init__(self):
        for net in self.networks.values():
            net.eval()

    @property
    def policy(self) -> nn.Module:
        return self.networks["actor"] if "actor" in self.networks else self.networks["q_net"]

    def act(self, obs: np.ndarray) -> Any:
        """The deterministic action for one observation, as the env takes it."""
        return self.policy.act(obs)

    def save(self, path: str) -> None:
        """Write the networks' weights (agent.pt) and the config (config.json) into the directory `path`."""
        os.makedirs(path, exist_ok=True)
        tmp = os.path.join(path, ".agent.pt.tmp")
        torch.save({name: net.state_dict() for name, net in self.networks.items()}, tmp)
        os.replace(tmp, os.path.join(path, "agent.pt"))
        cls = type(self.config)
        atomic_write_text(os.path.join(path, "config.json"), json.dumps(
            {"class": f"{cls.__module__}.{cls.__qualname__}", **config_dict(self.config)}, indent=2))


def load_agent(path: str) -> Agent:
    """The agent a `train_*` function saved: `path` is its output_dir or the agent/ folder in it. The networks
    are rebuilt for the spaces of the config's env_id (an env registered by the user must be registered again)."""
    folder = path if os.path.isfile(os.path.join(path, "agent.pt")) else os.path.join(path, "agent")
    for name in ("config.json", "agent.pt"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"{path} holds no saved agent (no {os.path.join(folder, name)})")
    with open(os.path.join(folder, "config.json")) as f:
        raw = json.load(f)
    module, _, name = raw.pop("class", "").rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module.startswith("llmrl.") else None
    if not (isinstance(cls, type) and issubclass(cls, RunConfig)):
        raise ValueError(f"{folder}/config.json names no llmrl agent config ('class')")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{folder}/config.json has fields {unknown} that {cls.__name__} does not know")
    config = cls(**raw)
    env = gym.make(config.env_id)
    networks = config.build_networks(env)
    env.close()
    state = torch.load(os.path.join(folder, "agent.pt"), map_location="cpu", weights_only=True)
    for key, net in networks.items():
        if key not in state:
            raise ValueError(f"{folder}/agent.pt has no network {key!r} (it has {sorted(state)})")
        net.load_state_dict(state[key])
    return Agent(config, networks)


@dataclass
class RunResult:
    """What every classic `train_*` returns: the trained agent and the run's figures."""

    agent: Agent
    total_timesteps: int  # env steps taken, summed over envs
    episode_returns: list[float]  # undiscounted return of each training episode, in the order they ended
    episode_end_steps: list[int]  # env step at which each of them ended
    steps_to_solve: Optional[int]  # first env step where the mean of the last 20 returns reached the threshold
    eval_returns: list[float]  # deterministic evaluation after training (eval_episodes of them)
    wall_s: float  # the training loop (setup and the final evaluation excluded, as SB3's learn())
    cpu_s: float
    info: dict = field(default_factory=dict)  # the agent's own figures (DQN: gradient_steps, evaluations)

    @property
    def eval_mean_return(self) -> Optional[float]:
        return float(np.mean(self.eval_returns)) if self.eval_returns else None

    def summary(self) -> dict:
        """The JSON-safe summary the recipes print."""
        cfg = self.agent.config
        recent = self.episode_returns[-20:]
        return {"env_id": cfg.env_id, "seed": cfg.seed, "total_timesteps": self.total_timesteps,
                "episodes": len(self.episode_returns), "steps_to_solve": self.steps_to_solve,
                "final_mean_return_20": float(np.mean(recent)) if recent else None,
                "eval_mean_return": self.eval_mean_return, "wall_s": round(self.wall_s, 2),
                "cpu_s": round(self.cpu_s, 2), "output_dir": cfg.output_dir,
                **{k: v for k, v in self.info.items() if isinstance(v, (int, float))}}


class Run:
    """Everything of a training run but the learning; use as `with Run(cfg) as run:` around the agent's loop.

    Entering checks the output_dir (before anything is written), sets torch's threads and the seeds. The loop
    calls `start()` once set up, `add_steps(n)` per env step(s), `episode(...)` per finished episode, `log(...)`
    per update, and returns `finish(networks)`. Leaving closes the logger and progress bar and restores torch's
    thread count, also when the loop raises."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir, RUN_FILES)
        try:
            spec = gym.spec(cfg.env_id)
        except gym.error.Error as e:
            raise ValueError(f"env_id={cfg.env_id!r}: {e}") from None
        threshold = spec.reward_threshold if cfg.solved_threshold is None else cfg.solved_threshold
        self.tracker = SolvedTracker(threshold)
        self.threads = torch.get_num_threads()
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.logger: RunLogger | None = None
        self.pbar: tqdm | None = None
        self.step = 0  # env steps so far, summed over envs

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Open the log and progress bar, and start the clocks: the loop begins (setup is done)."""
        self.logger = RunLogger(self.cfg.output_dir, tensorboard="tensorboard" in self.cfg.report_to)
        self.pbar = tqdm(total=self.cfg.total_timesteps, disable=not self.cfg.progress_bar, unit="step",
                         dynamic_ncols=True)
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def add_steps(self, n: int) -> None:
        self.step += n
        self.pbar.update(n)

    def episode(self, episode_return: float, length: int, **metrics) -> None:
        """A training episode ended at the current step (`metrics`: more values to log with it)."""
        self.tracker.add(episode_return, self.step)
        self.logger.log({"episode_return": float(episode_return), "episode_length": int(length)} | metrics,
                        self.step)
        self.pbar.set_postfix(ret20=f"{self.tracker.mean_recent:.1f}", refresh=False)

    def log(self, metrics: dict) -> None:
        """Per-update metrics, with the mean return of the last 20 episodes and env steps per second."""
        metrics = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        self.logger.log(metrics | {"mean_return_20": self.tracker.mean_recent,
                                   "steps_per_s": self.step / (time.perf_counter() - self.t0)}, self.step)

    def finish(self, networks: dict[str, nn.Module], info: dict | None = None) -> RunResult:
        """Stop the clocks, evaluate the deterministic policy, save the agent; the run's `RunResult`."""
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        self.pbar.close()
        cfg = self.cfg
        agent = Agent(cfg, networks)
        eval_returns = evaluate(agent.act, cfg.env_id, cfg.eval_episodes, cfg.eval_seed) if cfg.eval_episodes else []
        if cfg.save:
            agent.save(os.path.join(cfg.output_dir, "agent"))
        result = RunResult(agent, self.step, self.tracker.returns, self.tracker.end_steps, self.tracker.solved_at,
                           eval_returns, wall, cpu, info or {})
        self.logger.log({k: v for k, v in result.summary().items() if isinstance(v, (int, float))
                         and k not in ("seed", "total_timesteps")}, self.step)
        self.close()
        return result

    def close(self) -> None:
        for closable in (self.pbar, self.logger):
            if closable is not None:
                closable.close()
        self.pbar = self.logger = None
        torch.set_num_threads(self.threads)


@dataclass
class OnPolicyConfig(RunConfig):
    """Fields shared by the policy-gradient agents (REINFORCE, A2C, PPO, TRPO; each adds its own)."""

    ALIASES: ClassVar[dict[str, str]] = {"n_envs": "num_envs"}  # Stable-Baselines3's name

    num_envs: int = field(default=8, metadata={"help": "parallel envs (gymnasium SyncVectorEnv)"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "clip the global gradient norm (<= 0: off)"})
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64],
                                    metadata={"help": "hidden layer widths of the actor and of the critic"})
    activation: str = field(default="tanh", metadata={"help": "hidden activation: tanh | relu"})
    log_std_init: float = field(default=0.0, metadata={"help": "initial log-std of a Gaussian policy"})

    def __post_init__(self):
        super().__post_init__()
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    def build_networks(self, env: gym.Env | gym.vector.VectorEnv) -> dict[str, nn.Module]:
        """{"actor": pi_theta, "critic": V_phi} for the env's spaces."""
        actor, critic = build_actor_critic(self, env)
        return {"actor": actor, "critic": critic}
