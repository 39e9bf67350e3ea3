"""PPO on vectorized gymnasium envs: the clipped surrogate (Schulman et al. 2017; seed Algorithm 11, eq. 26) or
the KL-penalized surrogate with the adaptive beta rule (seed Algorithm 10), chosen by `--loss clip|kl`.

One iteration: collect T steps of N envs -> GAE advantages and returns (seed eq. 24) -> `num_epochs` passes of
shuffled minibatches of the loss  policy + vf_coef * value - ent_coef * entropy  (`ppo_loss`) -> adapt beta
(loss=kl) -> log. Every loss, advantage and KL controller comes from `llmrl.objectives`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor

from ..objectives import AdaptiveKLController, gae, kl_penalized_loss, ppo_clip_loss, value_loss, whiten
from .common import make_vec_env
from .policies import Actor, Critic
from .rollout import Rollout, RolloutCollector
from .run import OnPolicyConfig, Run, RunResult

LOSSES = ("clip", "kl")


@dataclass
class PPOConfig(OnPolicyConfig):
    """PPO-clip / KL-penalized PPO; defaults are the rl-zoo CartPole-v1 settings of the SB3 anchor."""

    ALIASES: ClassVar[dict[str, str]] = {"n_envs": "num_envs", "n_steps": "num_steps", "n_epochs": "num_epochs",
                                         "clip_range": "clip_coef", "clip_range_vf": "clip_value"}  # SB3's names

    output_dir: str = field(default="runs/ppo", metadata={"help": "metrics, TensorBoard logs and agent/ go here"})
    loss: str = field(default="clip", metadata={"help": "surrogate: clip (eq. 26) | kl (adaptive KL penalty)"})
    num_steps: int = field(default=32, metadata={"help": "steps per env per rollout (T)"})
    gamma: float = field(default=0.98, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.8, metadata={"help": "GAE lambda (seed eq. 24)"})
    num_epochs: int = field(default=20, metadata={"help": "passes over each rollout"})
    batch_size: int = field(default=256, metadata={"help": "steps per minibatch"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size"})
    anneal_lr: bool = field(default=False, metadata={"help": "decay the step size linearly to 0"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO clip range epsilon (loss=clip)"})
    clip_value: Optional[float] = field(default=None, metadata={
        "help": "clip V around its rollout value by this much (PPO2 value clipping; default: off)"})
    vf_coef: float = field(default=1.0, metadata={
        "help": "weight of the value loss 1/2 (V - G)^2 (1.0 here = SB3's 0.5 * MSE)"})
    ent_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})
    normalize_advantage: bool = field(default=True, metadata={
        "help": "whiten advantages per minibatch", "help_off": "use the raw GAE advantages"})
    target_kl: Optional[float] = field(default=None, metadata={
        "help": "stop an iteration's epochs once the approx. KL of an epoch's last minibatch exceeds 1.5 x this "
                "(default: off)"})
    kl_beta: float = field(default=1.0, metadata={"help": "initial KL coefficient beta (loss=kl)"})
    kl_target: float = field(default=0.01, metadata={
        "help": "KL target d_targ of the adaptive rule: beta x1.5 above 1.5 d_targ, /1.5 below d_targ/1.5"})
    reward_scale: float = field(default=1.0, metadata={"help": "multiply rewards by this before GAE"})

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("num_steps", "num_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.batch_size > self.num_envs * self.num_steps:
            raise ValueError(f"batch_size {self.batch_size} exceeds the rollout size num_envs * num_steps = "
                             f"{self.num_envs * self.num_steps}")


def ppo_loss(actor: Actor, critic: Critic, mb: Rollout, advantages: Tensor, returns: Tensor, cfg: PPOConfig,
             beta: float = 0.0) -> tuple[Tensor, dict]:
    """Minibatch loss  L_policy + vf_coef L_value - ent_coef H  on flat rows of a rollout; (loss, detached stats).

    L_policy is the clipped surrogate (eq. 26) or, for loss=kl, the KL-penalized one (Algorithm 10) with the exact
    KL(pi_old || pi), as the full distributions are at hand; L_value = 1/2 (V - G)^2 (eq. 22), optionally clipped.
    A rollout has no padding, so the objectives get mask=None."""
    params = actor(mb.obs)
    logp = actor.log_prob(params, mb.actions)
    if cfg.loss == "clip":
        policy_loss, stats = ppo_clip_loss(logp, mb.logp, advantages, None, clip_low=cfg.clip_coef)
    else:
        policy_loss, stats = kl_penalized_loss(logp, mb.logp, advantages, None, beta,
                                               kl=actor.kl(mb.dist_params, params))
    v_loss = value_loss(critic(mb.obs), returns, old_values=mb.values, clip=cfg.clip_value)
    entropy = actor.entropy(params).mean()
    loss = policy_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
    return loss, stats | {"policy_loss": policy_loss.detach(), "value_loss": v_loss.detach(),
                          "entropy": entropy.detach()}


def train_ppo(cfg: PPOConfig) -> RunResult:
    """Train PPO from `cfg`; the trained agent and the run's figures (steps to solve, evaluation, wall time)."""
    with Run(cfg) as run:
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        actor, critic = networks["actor"], networks["critic"]
        parameters = [*actor.parameters(), *critic.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate, eps=1e-5, fused=True)
        kl_ctl = AdaptiveKLController(cfg.kl_beta, cfg.kl_target) if cfg.loss == "kl" else None
        collector = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed)
        rollout_size = cfg.num_envs * cfg.num_steps

        run.start()
        while run.step < cfg.total_timesteps:
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - run.step / cfg.total_timesteps)
            rollout = collector.collect()
            with torch.no_grad():
                advantages, returns = gae(rollout.rewards * cfg.reward_scale, rollout.values, rollout.next_values,
                                          rollout.dones, cfg.gamma, cfg.gae_lambda, terminated=rollout.terminated)
            data, advantages, returns = rollout.flat(), advantages.flatten(), returns.flatten()

            beta = kl_ctl.beta if kl_ctl is not None else 0.0
            for epoch in range(cfg.num_epochs):
                for idx in torch.randperm(rollout_size).split(cfg.batch_size):
                    adv = whiten(advantages[idx]) if cfg.normalize_advantage else advantages[idx]
                    loss, stats = ppo_loss(actor, critic, data.rows(idx), adv, returns[idx], cfg, beta)
                    optimizer.zero_grad()
                    loss.backward()
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm, foreach=True)
                    optimizer.step()
                # early stop on the KL of the epoch's last minibatch, measured before its update
                if cfg.target_kl is not None and stats.get("approx_kl", stats.get("kl")) > 1.5 * cfg.target_kl:
                    break

            metrics = stats | {"epochs": epoch + 1}
            if kl_ctl is not None:  # Algorithm 10: compare the KL the epochs produced with the target, adapt beta
                with torch.no_grad():
                    kl = actor.kl(data.dist_params, actor(data.obs)).mean().item()
                metrics |= {"kl_rollout": kl, "beta": kl_ctl.update(kl)}
            run.log(metrics)
        envs.close()
        return run.finish(networks)
