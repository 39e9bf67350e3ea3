"""PPO on vectorized gymnasium envs: the clipped surrogate (Schulman et al. 2017; seed Algorithm 11, eq. 26) or
the KL-penalized surrogate with the adaptive beta rule (seed Algorithm 10), chosen by `--loss clip|kl`.

One iteration: collect T steps of N envs -> GAE advantages and returns (seed eq. 24) -> `num_epochs` passes of
shuffled minibatches of the loss  policy + vf_coef * value - ent_coef * entropy  -> log. Every loss, advantage
and KL controller comes from `llmrl.objectives`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..objectives import AdaptiveKLController, gae, kl_penalized_loss, ppo_clip_loss, value_loss, whiten
from .common import clip_grad_norm_flat_, flat_parameters, make_vec_env
from .critic_process import CriticProcess
from .policies import Actor, Critic, build_actor_critic, load_actor_critic
from .rollout import OnPolicyConfig, OnPolicyRun, Rollout, RolloutCollector

LOSSES = ("clip", "kl")


@dataclass
class PPOConfig(OnPolicyConfig):
    """PPO-clip / KL-penalized PPO; defaults are the rl-zoo CartPole-v1 settings of the SB3 anchor."""

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
    normalize_advantage: bool = field(default=True, metadata={"help": "whiten advantages per minibatch"})
    target_kl: Optional[float] = field(default=None, metadata={
        "help": "stop an iteration's epochs once the approx. KL of an epoch's last minibatch exceeds 1.5 x this "
                "(default: off)"})
    kl_beta: float = field(default=1.0, metadata={"help": "initial KL coefficient beta (loss=kl)"})
    kl_target: float = field(default=0.01, metadata={
        "help": "KL target d_targ of the adaptive rule: beta x1.5 above 1.5 d_targ, /1.5 below d_targ/1.5"})
    critic_process: bool = field(default=True, metadata={
        "help": "compute the critic's half of each update in a second process, beside the actor's half (they share "
                "no parameter: the same update, less wall time; ignored on a one-CPU machine and off POSIX)"})
    reward_scale: float = field(default=1.0, metadata={"help": "multiply rewards by this before GAE"})
    run_dir: str = field(default="runs/ppo_cartpole", metadata={"help": "where metrics and the agent go"})

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


def policy_loss(actor: Actor, mb: Rollout, advantages: Tensor, cfg: PPOConfig, beta: float = 0.0,
                with_stats: bool = True) -> tuple[Tensor, dict]:
    """The actor's part of the minibatch loss, L_policy - ent_coef H, on flat rows of a rollout; (loss, stats).
    `with_stats=False` skips the logging statistics (clip fractions, KL, entropy) where they are not read."""
    params = actor(mb.obs)
    logp = actor.log_prob(params, mb.actions)
    mask = None  # a rollout has no padding
    if cfg.loss == "clip":
        loss, stats = ppo_clip_loss(logp, mb.logp, advantages, mask, clip_low=cfg.clip_coef, with_stats=with_stats)
    else:  # the full distributions are at hand, so the penalty uses the exact KL(pi_old || pi)
        loss, stats = kl_penalized_loss(logp, mb.logp, advantages, mask, beta, kl=actor.kl(mb.dist_params, params))
    ent = actor.entropy(params).mean() if cfg.ent_coef or with_stats else None
    if with_stats:
        stats |= {"policy_loss": loss.detach(), "entropy": ent.detach()}
    if cfg.ent_coef:  # (no backward pass through an unused entropy term)
        loss = loss - cfg.ent_coef * ent
    return loss, stats


def critic_loss(critic: Critic, obs: Tensor, returns: Tensor, old_values: Tensor, cfg: PPOConfig) -> Tensor:
    """The critic's part of the minibatch loss (unweighted): L_value = 1/2 (V - G)^2 (seed eq. 22), clipped around
    the rollout's values V_old when cfg.clip_value is set."""
    return value_loss(critic(obs), returns, old_values=old_values, clip=cfg.clip_value)


def critic_backward(critic: Critic, obs: Tensor, returns: Tensor, old_values: Tensor, cfg: PPOConfig) -> Tensor:
    """Forward and backward of the critic's half of the loss, vf_coef L_value (accumulated into the critic's
    .grad, here or in the critic process); returns L_value, detached."""
    v_loss = critic_loss(critic, obs, returns, old_values, cfg)
    (cfg.vf_coef * v_loss).backward()
    return v_loss.detach()


def ppo_loss(actor: Actor, critic: Critic, mb: Rollout, advantages: Tensor, returns: Tensor, cfg: PPOConfig,
             beta: float = 0.0, with_stats: bool = True) -> tuple[Tensor, dict]:
    """Minibatch loss  L_policy + vf_coef L_value - ent_coef H  on flat rows of a rollout; (loss, stats)."""
    loss, stats = policy_loss(actor, mb, advantages, cfg, beta, with_stats)
    v_loss = critic_loss(critic, mb.obs, returns, mb.values, cfg)
    return loss + cfg.vf_coef * v_loss, stats | ({"value_loss": v_loss.detach()} if with_stats else {})


def _children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) child processes."""
    t = os.times()
    return t.children_user + t.children_system


def train_ppo(cfg: PPOConfig) -> dict:
    """Train PPO from `cfg`; returns the run summary (steps to solve, evaluation return, wall time)."""
    # The actor and the critic share no parameter: with `critic_process` the critic's half of each update runs in
    # a second process at the same time as the actor's half here (llmrl/classic/critic_process.py). Started first,
    # as it takes a second or two to start.
    children_cpu = _children_cpu()
    worker = CriticProcess() if cfg.critic_process and os.name == "posix" and (os.cpu_count() or 1) > 1 else None
    envs = None
    try:
        run = OnPolicyRun(cfg)
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        actor, critic = build_actor_critic(cfg, envs)
        parameters = flat_parameters(actor, critic)  # one tensor: one Adam op, one norm for the gradient clipping
        optimizer = torch.optim.Adam([parameters], lr=cfg.learning_rate, eps=1e-5, fused=True)
        kl_ctl = AdaptiveKLController(cfg.kl_beta, cfg.kl_target) if cfg.loss == "kl" else None
        collector = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed)
        rollout_size = cfg.num_envs * cfg.num_steps

        data = collector.buffer.flat()  # views of the buffer each rollout is written into
        if worker is not None:
            worker.setup(cfg, critic, parameters, sum(p.numel() for p in actor.parameters()), rollout_size,
                         tuple(data.obs.shape[1:]), critic_backward)

        run.start()
        while run.step < cfg.total_steps:
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - run.step / cfg.total_steps)
            rollout = collector.collect()
            with torch.no_grad():
                advantages, returns = gae(rollout.rewards * cfg.reward_scale, rollout.values, rollout.next_values,
                                          rollout.dones, cfg.gamma, cfg.gae_lambda, terminated=rollout.terminated)
            advantages, returns = advantages.flatten(), returns.flatten()
            if worker is not None:
                worker.load(data.obs, data.values, returns)

            beta = kl_ctl.beta if kl_ctl is not None else 0.0
            # With one minibatch per epoch (the CartPole default) every epoch sees the whole rollout: the mean loss
            # does not depend on the row order, so skip the shuffle and whiten once.
            full_batch = cfg.batch_size >= rollout_size
            if full_batch and cfg.normalize_advantage:
                advantages = whiten(advantages)
            for epoch in range(cfg.num_epochs):
                if full_batch:
                    minibatches = [None]
                else:
                    perm = torch.randperm(rollout_size)
                    if worker is not None:
                        worker.shuffle(perm)
                    minibatches = [(lo, min(lo + cfg.batch_size, rollout_size))
                                   for lo in range(0, rollout_size, cfg.batch_size)]
                for i, rows in enumerate(minibatches):
                    if rows is None:
                        mb, adv, ret = data, advantages, returns
                    else:
                        idx = perm[rows[0]:rows[1]]
                        mb, adv, ret = data.rows(idx), advantages[idx], returns[idx]
                        adv = whiten(adv) if cfg.normalize_advantage else adv
                    # statistics are read after an epoch's last minibatch (target-KL stop) and after the last epoch
                    last = i == len(minibatches) - 1 and (cfg.target_kl is not None or epoch == cfg.num_epochs - 1)
                    parameters.grad.zero_()
                    in_worker = worker is not None and worker.start(rows)
                    loss, stats = policy_loss(actor, mb, adv, cfg, beta, with_stats=last)
                    loss.backward()
                    v_loss = worker.wait() if in_worker else critic_backward(critic, mb.obs, ret, mb.values, cfg)
                    if cfg.max_grad_norm > 0:
                        clip_grad_norm_flat_(parameters, cfg.max_grad_norm)
                    optimizer.step()
                if cfg.target_kl is not None and stats.get("approx_kl", stats.get("kl")) > 1.5 * cfg.target_kl:
                    break

            metrics = {k: v for k, v in stats.items() if k in ("policy_loss", "entropy", "clip_frac", "approx_kl",
                                                               "kl")}
            metrics |= {"value_loss": v_loss, "epochs": epoch + 1}
            if kl_ctl is not None:  # Algorithm 10: compare the KL the epochs produced with the target, adapt beta
                with torch.no_grad():
                    kl = actor.kl(data.dist_params, actor(data.obs)).mean().item()
                metrics |= {"kl_rollout": kl, "beta": kl_ctl.update(kl)}
            run.log(metrics)
    finally:
        if envs is not None:
            envs.close()
        if worker is not None:
            worker.close()
    extra = {"kl_beta": kl_ctl.beta} if kl_ctl is not None else None
    summary = run.finish(actor, {"actor": actor, "critic": critic}, extra=extra)
    if worker is not None:  # the second process's CPU time, and how many updates' critic halves it computed
        summary["cpu_s"] = round(summary["cpu_s"] + _children_cpu() - children_cpu, 2)
        summary["critic_process_updates"] = worker.updates
    return summary


def load_ppo(path: str) -> tuple[Actor, Critic, PPOConfig]:
    """The (actor, critic, config) saved by `train_ppo` in `path`."""
    return load_actor_critic(path, PPOConfig)
