"""A2C: synchronous advantage actor-critic (Mnih et al. 2016) on vectorized gymnasium envs.

One iteration: collect T steps of N envs -> advantages from k-step returns (seed eq. 23) or GAE (seed eq. 24)
-> one gradient step on  -sum_t log pi(a_t|s_t) A_t + vf_coef * 1/2 (V - G)^2 - ent_coef * H  -> log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..objectives import gae, n_step_returns, policy_gradient_loss, value_loss, whiten
from .common import make_vec_env
from .rollout import Rollout, RolloutCollector
from .run import OnPolicyConfig, Run, RunResult

ADVANTAGES = ("nstep", "gae")
OPTIMIZERS = ("adam", "rmsprop")


@dataclass
class A2CConfig(OnPolicyConfig):
    """A2C; defaults solve CartPole-v1 (recipes/a2c_cartpole.py)."""

    total_timesteps: int = field(default=200_000, metadata={"help": "env steps to train for (summed over envs)"})
    output_dir: str = field(default="runs/a2c", metadata={"help": "metrics, TensorBoard logs and agent/ go here"})
    num_steps: int = field(default=8, metadata={"help": "steps per env per rollout (T)"})
    advantage: str = field(default="gae", metadata={"help": "nstep (eq. 23: G^(k) - V) | gae (eq. 24)"})
    n_step: Optional[int] = field(default=None, metadata={
        "help": "k of the k-step return (advantage=nstep; default: the rest of the rollout window)"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (advantage=gae)"})
    optimizer: str = field(default="adam", metadata={"help": "adam | rmsprop (the A3C paper's)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "step size"})
    vf_coef: float = field(default=1.0, metadata={"help": "weight of the value loss 1/2 (V - G)^2"})
    ent_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})
    normalize_advantage: bool = field(default=True, metadata={
        "help": "whiten advantages per rollout", "help_off": "use the raw advantages"})

    def __post_init__(self):
        super().__post_init__()
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.n_step is not None and self.n_step < 1:
            raise ValueError(f"n_step must be >= 1 (or unset for the whole window), got {self.n_step}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")


@torch.no_grad()
def a2c_advantages(ro: Rollout, cfg: A2CConfig) -> tuple[Tensor, Tensor]:
    """(advantages, value targets), (N, T): A = G^(k) - V(s_t) with k-step returns (eq. 23), or GAE (eq. 24)."""
    if cfg.advantage == "gae":
        return gae(ro.rewards, ro.values, ro.next_values, ro.dones, cfg.gamma, cfg.gae_lambda,
                   terminated=ro.terminated)
    returns = n_step_returns(ro.rewards, ro.next_values, ro.dones, cfg.gamma, cfg.n_step, terminated=ro.terminated)
    return returns - ro.values, returns


def train_a2c(cfg: A2CConfig) -> RunResult:
    """Train A2C from `cfg`; the trained agent and the run's figures (steps to solve, evaluation, wall time)."""
    with Run(cfg) as run:
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        actor, critic = networks["actor"], networks["critic"]
        parameters = [*actor.parameters(), *critic.parameters()]
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate, eps=1e-5, fused=True)
        else:
            optimizer = torch.optim.RMSprop(parameters, lr=cfg.learning_rate, alpha=0.99, eps=1e-5, foreach=True)
        collector = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed)

        run.start()
        while run.step < cfg.total_timesteps:
            ro = collector.collect()
            advantages, returns = a2c_advantages(ro, cfg)
            if cfg.normalize_advantage:
                advantages = whiten(advantages)

            params = actor(ro.obs)
            policy_loss = policy_gradient_loss(actor.log_prob(params, ro.actions), advantages, None)  # no padding
            v_loss = value_loss(critic(ro.obs), returns)
            entropy = actor.entropy(params).mean()
            loss = policy_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm, foreach=True)
            optimizer.step()
            run.log({"policy_loss": policy_loss, "value_loss": v_loss, "entropy": entropy})
        envs.close()
        return run.finish(networks)
