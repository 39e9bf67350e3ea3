"""REINFORCE (Williams 1992; seed Algorithm 7): the Monte-Carlo policy gradient on whole episodes,

    grad J(theta) ~= 1/N sum_i sum_t w_t grad log pi_theta(a_t|s_t) (G_t - b_t),

with reward-to-go G_t, w_t = gamma^t (the exact gradient of J = E[sum_t gamma^t r_t]) or w_t = 1 (common
practice), and a baseline b: none | constant | time_dependent | optimal (minimum variance) | value (a learned
V_phi(s_t), regressed on G_t by seed eq. 22). Every quantity comes from `llmrl.objectives`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from ..objectives import (constant_baseline, discounted_returns, optimal_baseline, policy_gradient_loss,
                          time_dependent_baseline, value_loss)
from .common import make_env
from .policies import Actor, Critic, build_actor_critic, load_actor_critic
from .rollout import EpisodeBatch, EpisodeCollector, OnPolicyConfig, OnPolicyRun

BASELINES = ("none", "constant", "time_dependent", "optimal", "value")


@dataclass
class ReinforceConfig(OnPolicyConfig):
    """REINFORCE with a baseline; defaults solve CartPole-v1 (recipes/reinforce_cartpole.py)."""

    total_steps: int = field(default=300_000, metadata={"help": "env steps to train for (summed over envs)"})
    num_envs: int = field(default=8, metadata={"help": "envs running episodes of a batch side by side"})
    episodes_per_batch: int = field(default=16, metadata={"help": "complete episodes per gradient step (N)"})
    baseline: str = field(default="value", metadata={"help": f"baseline b_t: {' | '.join(BASELINES)}"})
    leave_one_out: bool = field(default=True, metadata={
        "help": "batch baselines (constant / time_dependent / optimal) for episode i from the other episodes "
                "only, which keeps the estimator exactly unbiased"})
    discount_weighting: bool = field(default=False, metadata={
        "help": "weight step t by gamma^t (the exact gradient of the discounted return; off is the usual "
                "practice, which favours late steps)"})
    learning_rate: float = field(default=3e-3, metadata={"help": "Adam step size of the policy"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "clip the global gradient norm (<= 0: off)"})
    value_learning_rate: float = field(default=3e-3, metadata={"help": "Adam step size of V_phi"})
    value_epochs: int = field(default=5, metadata={"help": "passes over the batch to regress V_phi on G_t"})
    value_batch_size: int = field(default=512, metadata={"help": "steps per minibatch of the V_phi regression"})
    report_variance: bool = field(default=False, metadata={
        "help": "log the empirical variance of the gradient estimator for every baseline on each batch"})
    run_dir: str = field(default="runs/reinforce_cartpole", metadata={"help": "where metrics and the agent go"})

    def __post_init__(self):
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.episodes_per_batch < 2:
            raise ValueError(f"episodes_per_batch must be >= 2, got {self.episodes_per_batch}")
        for name in ("value_epochs", "value_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def per_step_scores(actor: Actor, obs: Tensor, actions: Tensor) -> Tensor:
    """Score vectors grad_theta log pi(a_t|s_t), one row per step: (S, ...) -> (S, P) (per-sample grads by vmap)."""
    params = {k: v.detach() for k, v in actor.named_parameters()}

    def logp(p, o, a):
        return actor.log_prob(functional_call(actor, p, (o,)), a)

    grads = vmap(grad(logp), in_dims=(None, 0, 0))(params, obs, actions)
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def chunked_scores(actor: Actor, batch: EpisodeBatch, chunk: int = 1024):
    """(valid step indices, their score vectors) in chunks, so (S, P) is never held at once."""
    valid = batch.mask.bool()
    obs, actions = batch.obs[valid], batch.actions[valid]
    for idx in torch.arange(len(obs)).split(chunk):
        yield idx, per_step_scores(actor, obs[idx], actions[idx])


def score_norms(actor: Actor, batch: EpisodeBatch) -> Tensor:
    """||grad_theta log pi(a_t|s_t)||^2 for each step, (N, T) (0 on padding): the optimal baseline's weights."""
    flat = torch.zeros(int(batch.mask.sum()))
    for idx, scores in chunked_scores(actor, batch):
        flat[idx] = scores.pow(2).sum(1)
    out = torch.zeros_like(batch.mask)
    out[batch.mask.bool()] = flat
    return out


def baseline_values(name: str, returns: Tensor, mask: Tensor, values: Tensor | None = None,
                    grad_sq: Tensor | None = None, leave_one_out: bool = True) -> Tensor:
    """b_t of the named baseline for returns G (N, T): (N, T). `values` = V_phi(s_t) for "value", `grad_sq` =
    ||grad log pi||^2 for "optimal"."""
    if name == "none":
        return torch.zeros_like(returns)
    if name == "constant":
        return constant_baseline(returns, mask, leave_one_out=leave_one_out)
    if name == "time_dependent":
        return time_dependent_baseline(returns, mask, leave_one_out=leave_one_out)
    if name == "optimal":
        if grad_sq is None:
            raise ValueError("baseline 'optimal' needs grad_sq (score_norms of the batch)")
        return optimal_baseline(returns, grad_sq, mask, leave_one_out=leave_one_out)
    if name == "value":
        if values is None:
            raise ValueError("baseline 'value' needs values V_phi(s_t) from a critic")
        return values * mask
    raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")


def reinforce_advantages(returns: Tensor, mask: Tensor, gamma: float, baseline: str, values: Tensor | None = None,
                         grad_sq: Tensor | None = None, leave_one_out: bool = True,
                         discount_weighting: bool = False) -> Tensor:
    """The per-step weights w_t (G_t - b_t) of Algorithm 7's estimator for reward-to-go G (N, T): (N, T)."""
    adv = (returns - baseline_values(baseline, returns, mask, values, grad_sq, leave_one_out)) * mask
    if discount_weighting:
        adv = adv * gamma ** torch.arange(adv.shape[1], dtype=adv.dtype)
    return adv


def reinforce_loss(actor: Actor, batch: EpisodeBatch, advantages: Tensor) -> Tensor:
    """-1/N sum_i sum_t log pi(a_t|s_t) A_t, whose gradient is minus the REINFORCE estimate of grad J."""
    logp = actor.log_prob(actor(batch.obs), batch.actions)
    return policy_gradient_loss(logp, advantages, batch.mask, mode="sum") / batch.mask.shape[0]


@torch.no_grad()
def gradient_variance(actor: Actor, batch: EpisodeBatch, advantages: dict[str, Tensor]) -> dict[str, float]:
    """Empirical variance of the single-episode estimator g_i = sum_t grad log pi(a_t|s_t) A_t for each
    baseline's advantages (N, T) on the same batch: trace of the covariance over episodes, sum_p Var_i(g_ip)."""
    valid = batch.mask.bool()
    N, P = batch.mask.shape[0], sum(p.numel() for p in actor.parameters())
    episode = torch.arange(N)[:, None].expand_as(valid)[valid]  # episode index of each valid step
    weights = {name: adv[valid] for name, adv in advantages.items()}
    per_episode = {name: torch.zeros(N, P) for name in advantages}  # g_i for each baseline
    for idx, scores in chunked_scores(actor, batch):
        for name, g in per_episode.items():
            g.index_add_(0, episode[idx], scores * weights[name][idx, None])
    return {name: float(g.var(dim=0).sum()) for name, g in per_episode.items()}


def train_reinforce(cfg: ReinforceConfig) -> dict:
    """Train REINFORCE from `cfg`; returns the run summary (steps to solve, evaluation return, wall time)."""
    run = OnPolicyRun(cfg)
    envs = [make_env(cfg.env_id, cfg.seed + i) for i in range(cfg.num_envs)]
    actor, critic = build_actor_critic(cfg, envs[0], critic=cfg.baseline == "value")
    optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.learning_rate, fused=True)
    value_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.value_learning_rate, fused=True) if critic else None
    collector = EpisodeCollector(envs, actor, run, cfg.seed)

    run.start()
    while run.step < cfg.total_steps:
        batch = collector.collect(cfg.episodes_per_batch)
        returns = discounted_returns(batch.rewards, cfg.gamma, batch.dones)  # reward-to-go G_t

        # Baselines come from the policy and critic before this batch's updates, so b_t never depends on a_t.
        with torch.no_grad():
            values = critic(batch.obs) if critic is not None else None
        grad_sq = score_norms(actor, batch) if cfg.baseline == "optimal" or cfg.report_variance else None
        adv = reinforce_advantages(returns, batch.mask, cfg.gamma, cfg.baseline, values, grad_sq,
                                   cfg.leave_one_out, cfg.discount_weighting)
        metrics = {}
        if cfg.report_variance:
            names = [b for b in BASELINES if b != "value" or values is not None]
            every = {b: reinforce_advantages(returns, batch.mask, cfg.gamma, b, values, grad_sq,
                                             cfg.leave_one_out, cfg.discount_weighting) for b in names}
            metrics |= {f"grad_var/{b}": v for b, v in gradient_variance(actor, batch, every).items()}

        loss = reinforce_loss(actor, batch, adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
        optimizer.step()

        if critic is not None:  # V_phi regression on the Monte-Carlo returns (seed eq. 22)
            valid = batch.mask.bool()
            obs, targets = batch.obs[valid], returns[valid]
            for _ in range(cfg.value_epochs):
                for idx in torch.randperm(len(obs)).split(cfg.value_batch_size):
                    v_loss = value_loss(critic(obs[idx]), targets[idx])
                    value_optimizer.zero_grad(set_to_none=True)
                    v_loss.backward()
                    value_optimizer.step()
            metrics["value_loss"] = v_loss.item()
        run.log(metrics | {"policy_loss": loss.item(), "mean_episode_length": batch.lengths.float().mean().item()})

    for env in envs:
        env.close()
    modules = {"actor": actor} | ({"critic": critic} if critic is not None else {})
    return run.finish(actor, modules)


def load_reinforce(path: str) -> tuple[Actor, Critic | None, ReinforceConfig]:
    """The (actor, critic or None, config) saved by `train_reinforce` in `path`."""
    return load_actor_critic(path, ReinforceConfig)
