"""TRPO (Schulman et al. 2015; seed Algorithm 9) on vectorized gymnasium envs.

One iteration: collect T steps of N envs -> GAE advantages (seed eq. 24) -> one natural-gradient step of the
policy: x = F^-1 g by conjugate gradient on the Hessian of the exact mean KL(pi_old || pi_theta), scaled to
the trust region and shrunk by backtracking until KL <= max_kl and the surrogate improves -> the value function
is fitted separately by minibatch regression on the returns (seed eq. 22) -> log.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..objectives import gae, surrogate_loss, trust_region_step, value_loss, whiten
from .common import make_vec_env
from .policies import Actor
from .rollout import Rollout, RolloutCollector
from .run import OnPolicyConfig, Run, RunResult


@dataclass
class TRPOConfig(OnPolicyConfig):
    """TRPO; defaults solve CartPole-v1 (recipes/trpo_cartpole.py)."""

    total_timesteps: int = field(default=200_000, metadata={"help": "env steps to train for (summed over envs)"})
    output_dir: str = field(default="runs/trpo", metadata={"help": "metrics, TensorBoard logs and agent/ go here"})
    num_steps: int = field(default=64, metadata={"help": "steps per env per rollout (T)"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (seed eq. 24)"})
    normalize_advantage: bool = field(default=True, metadata={
        "help": "whiten advantages per rollout", "help_off": "use the raw GAE advantages"})
    max_kl: float = field(default=0.01, metadata={"help": "trust region radius delta: mean KL(pi_old || pi)"})
    damping: float = field(default=0.1, metadata={"help": "F + damping I makes the CG system well posed"})
    cg_iters: int = field(default=10, metadata={"help": "conjugate gradient iterations"})
    backtrack_iters: int = field(default=10, metadata={"help": "line-search halvings before giving up"})
    backtrack_coef: float = field(default=0.5, metadata={"help": "step shrink factor of the line search"})
    accept_ratio: float = field(default=0.1, metadata={
        "help": "accept a step improving the surrogate by >= this fraction of the linear prediction"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size of the value function"})
    value_epochs: int = field(default=10, metadata={"help": "passes over each rollout to fit V"})
    value_batch_size: int = field(default=128, metadata={"help": "steps per minibatch of the V regression"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_steps", "cg_iters", "backtrack_iters", "value_epochs", "value_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_kl <= 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")
        if not 0.0 < self.backtrack_coef < 1.0:
            raise ValueError(f"backtrack_coef must be in (0, 1), got {self.backtrack_coef}")


def trpo_policy_step(actor: Actor, data: Rollout, advantages: Tensor, cfg: TRPOConfig) -> dict:
    """One trust-region step of the actor in place on flat rollout rows; the stats of `trust_region_step`."""
    mask = torch.ones_like(advantages)

    def loss_fn() -> Tensor:  # the surrogate -mean rho A
        return surrogate_loss(actor.log_prob(actor(data.obs), data.actions), data.logp, advantages, mask)

    def kl_fn() -> Tensor:  # exact mean KL(pi_old || pi_theta) from the stored distribution parameters
        return actor.kl(data.dist_params, actor(data.obs)).mean()

    return trust_region_step(actor.parameters(), loss_fn, kl_fn, max_kl=cfg.max_kl, damping=cfg.damping,
                             cg_iters=cfg.cg_iters, backtrack_iters=cfg.backtrack_iters,
                             backtrack_coef=cfg.backtrack_coef, accept_ratio=cfg.accept_ratio)


def train_trpo(cfg: TRPOConfig) -> RunResult:
    """Train TRPO from `cfg`; the trained agent and the run's figures (steps to solve, evaluation, wall time)."""
    with Run(cfg) as run:
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        actor, critic = networks["actor"], networks["critic"]
        value_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
        collector = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed)

        run.start()
        while run.step < cfg.total_timesteps:
            ro = collector.collect()
            with torch.no_grad():
                advantages, returns = gae(ro.rewards, ro.values, ro.next_values, ro.dones, cfg.gamma,
                                          cfg.gae_lambda, terminated=ro.terminated)
            data, advantages, returns = ro.flat(), advantages.flatten(), returns.flatten()
            if cfg.normalize_advantage:
                advantages = whiten(advantages)

            stats = trpo_policy_step(actor, data, advantages, cfg)

            for _ in range(cfg.value_epochs):  # V_phi fitted on its own, after the policy step
                for idx in torch.randperm(len(returns)).split(cfg.value_batch_size):
                    v_loss = value_loss(critic(data.obs[idx]), returns[idx])
                    value_optimizer.zero_grad()
                    v_loss.backward()
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm, foreach=True)
                    value_optimizer.step()
            run.log({"value_loss": v_loss, "kl": stats["kl"], "step_frac": stats["step_frac"],
                     "accepted": float(stats["accepted"]), "surrogate_improvement": stats["improvement"]})
        envs.close()
        return run.finish(networks)
