"""REINFORCE (Williams 1992; seed Algorithm 7): the Monte-Carlo policy gradient on whole episodes,

    grad J(theta) ~= 1/N sum_i sum_t w_t grad log pi_theta(a_t|s_t) (G_t - b_t),

with reward-to-go G_t, w_t = gamma^t (the exact gradient of J = E[sum_t gamma^t r_t]) or w_t = 1 (common
practice), and a baseline b (seed ch. 7): none | constant | time_dependent | optimal (the minimum-variance b_tk,
one per parameter) | value (a learned V_phi(s_t), regressed on G_t by seed eq. 22). Every quantity comes from
`llmrl.objectives`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..objectives import (constant_baseline, discounted_returns, policy_gradient_loss, time_dependent_baseline,
                          value_loss)
from ..objectives.baselines import optimal_baseline, policy_gradient_estimate
from .common import make_env
from .policies import Actor, build_actor_critic
from .rollout import EpisodeBatch, EpisodeCollector
from .run import OnPolicyConfig, Run, RunResult

BASELINES = ("none", "constant", "time_dependent", "optimal", "value")


@dataclass
class ReinforceConfig(OnPolicyConfig):
    """REINFORCE with a baseline; defaults solve CartPole-v1 (recipes/reinforce_cartpole.py)."""

    total_timesteps: int = field(default=300_000, metadata={"help": "env steps to train for (summed over envs)"})
    output_dir: str = field(default="runs/reinforce", metadata={
        "help": "metrics, TensorBoard logs and agent/ go here"})
    num_envs: int = field(default=8, metadata={"help": "envs running episodes of a batch side by side"})
    episodes_per_batch: int = field(default=16, metadata={"help": "complete episodes per gradient step (N)"})
    baseline: str = field(default="value", metadata={"help": f"baseline b_t: {' | '.join(BASELINES)}"})
    leave_one_out: bool = field(default=True, metadata={
        "help": "batch baselines (constant / time_dependent / optimal) for episode i from the other episodes "
                "only, which keeps the estimator exactly unbiased",
        "help_off": "batch baselines from every episode, its own included (biased by O(1/N))"})
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

    def __post_init__(self):
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.episodes_per_batch < 2:
            raise ValueError(f"episodes_per_batch must be >= 2, got {self.episodes_per_batch}")
        for name in ("value_epochs", "value_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def build_networks(self, env: gym.Env | gym.vector.VectorEnv) -> dict[str, nn.Module]:
        """{"actor": pi_theta}, and {"critic": V_phi} for the value baseline."""
        actor, critic = build_actor_critic(self, env, critic=self.baseline == "value")
        return {"actor": actor} | ({"critic": critic} if critic is not None else {})


def per_step_scores(actor: Actor, batch: EpisodeBatch, chunk: int = 1024) -> Tensor:
    """Score vectors grad_theta log pi(a_t|s_t) of every step, (N, T, P) with theta flattened in the order of
    actor.parameters(), 0 on padding; per-sample gradients by torch.func.vmap, `chunk` steps at a time."""
    params = {k: v.detach() for k, v in actor.named_parameters()}

    def logp(p, o, a):
        return actor.log_prob(functional_call(actor, p, (o,)), a)

    per_sample = vmap(grad(logp), in_dims=(None, 0, 0))
    valid = batch.mask.bool()
    obs, actions = batch.obs[valid], batch.actions[valid]
    scores = torch.zeros(*batch.mask.shape, sum(p.numel() for p in params.values()))
    scores[valid] = torch.cat([torch.cat([g.flatten(1) for g in per_sample(params, o, a).values()], dim=1)
                               for o, a in zip(obs.split(chunk), actions.split(chunk))])
    return scores


def baseline_values(name: str, returns: Tensor, mask: Tensor, values: Tensor | None = None,
                    scores: Tensor | None = None, leave_one_out: bool = True) -> Tensor:
    """b of the named baseline for returns G (N, T): (N, T), or (N, T, P) for "optimal", whose b_tk is per
    parameter. `values` = V_phi(s_t) for "value", `scores` = per_step_scores of the batch for "optimal"."""
    if name == "none":
        return torch.zeros_like(returns)
    if name == "constant":
        return constant_baseline(returns, mask, leave_one_out=leave_one_out)
    if name == "time_dependent":
        return time_dependent_baseline(returns, mask, leave_one_out=leave_one_out)
    if name == "optimal":
        if scores is None:
            raise ValueError("baseline 'optimal' needs the per-step scores of the batch (per_step_scores)")
        return optimal_baseline(returns, scores ** 2, mask, leave_one_out=leave_one_out)
    if name == "value":
        if values is None:
            raise ValueError("baseline 'value' needs values V_phi(s_t) from a critic")
        return values * mask
    raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")


def reinforce_advantages(returns: Tensor, mask: Tensor, gamma: float, baseline: str, values: Tensor | None = None,
                         scores: Tensor | None = None, leave_one_out: bool = True,
                         discount_weighting: bool = False) -> Tensor:
    """The per-step weights w_t (G_t - b_t) of Algorithm 7's estimator for reward-to-go G (N, T): (N, T), or
    (N, T, P) with the per-parameter optimal baseline."""
    b = baseline_values(baseline, returns, mask, values, scores, leave_one_out)
    w = mask * gamma ** torch.arange(mask.shape[1], dtype=mask.dtype) if discount_weighting else mask
    if b.dim() > returns.dim():
        return (returns.unsqueeze(-1) - b) * w.unsqueeze(-1)
    return (returns - b) * w


def reinforce_loss(actor: Actor, batch: EpisodeBatch, advantages: Tensor) -> Tensor:
    """-1/N sum_i sum_t log pi(a_t|s_t) A_t for advantages (N, T), whose gradient is minus the REINFORCE estimate
    of grad J."""
    logp = actor.log_prob(actor(batch.obs), batch.actions)
    return policy_gradient_loss(logp, advantages, batch.mask, mode="sum") / batch.mask.shape[0]


@torch.no_grad()
def gradient_variance(scores: Tensor, advantages: dict[str, Tensor]) -> dict[str, float]:
    """Empirical variance of the single-episode estimator g_i = sum_t grad log pi(a_t|s_t) A_t for each
    baseline's advantages on the same batch, scores (N, T, P): the trace of the covariance over episodes,
    sum_p Var_i(g_ip)."""
    return {name: float((scores * (A if A.dim() == 3 else A.unsqueeze(-1))).sum(1).var(dim=0).sum())
            for name, A in advantages.items()}


def train_reinforce(cfg: ReinforceConfig) -> RunResult:
    """Train REINFORCE from `cfg`; the trained agent and the run's figures (steps to solve, evaluation, wall time)."""
    with Run(cfg) as run:
        envs = [make_env(cfg.env_id, cfg.seed + i) for i in range(cfg.num_envs)]
        networks = cfg.build_networks(envs[0])
        actor, critic = networks["actor"], networks.get("critic")
        optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.learning_rate, fused=True)
        if critic is not None:
            value_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.value_learning_rate, fused=True)
        collector = EpisodeCollector(envs, actor, run, cfg.seed)

        run.start()
        while run.step < cfg.total_timesteps:
            batch = collector.collect(cfg.episodes_per_batch)
            returns = discounted_returns(batch.rewards, cfg.gamma, batch.dones)  # reward-to-go G_t

            # Baselines come from the policy and critic before this batch's updates, so b_t never depends on a_t.
            with torch.no_grad():
                values = critic(batch.obs) if critic is not None else None
            scores = per_step_scores(actor, batch) if cfg.baseline == "optimal" or cfg.report_variance else None
            adv = reinforce_advantages(returns, batch.mask, cfg.gamma, cfg.baseline, values, scores,
                                       cfg.leave_one_out, cfg.discount_weighting)
            metrics = {}
            if cfg.report_variance:
                names = [b for b in BASELINES if b != "value" or values is not None]
                every = {b: reinforce_advantages(returns, batch.mask, cfg.gamma, b, values, scores,
                                                 cfg.leave_one_out, cfg.discount_weighting) for b in names}
                metrics |= {f"grad_var/{b}": v for b, v in gradient_variance(scores, every).items()}

            optimizer.zero_grad()
            if cfg.baseline == "optimal":  # b_tk differs per parameter: the estimate is formed from the scores
                estimate = policy_gradient_estimate(scores, adv, batch.mask)
                for p, g in zip(actor.parameters(), estimate.split([p.numel() for p in actor.parameters()])):
                    p.grad = -g.view_as(p)  # the loss's gradient is minus the estimate
            else:
                loss = reinforce_loss(actor, batch, adv)
                loss.backward()
                metrics["policy_loss"] = loss.item()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm, foreach=True)
            optimizer.step()

            if critic is not None:  # V_phi regression on the Monte-Carlo returns (seed eq. 22)
                valid = batch.mask.bool()
                obs, targets = batch.obs[valid], returns[valid]
                for _ in range(cfg.value_epochs):
                    for idx in torch.randperm(len(obs)).split(cfg.value_batch_size):
                        v_loss = value_loss(critic(obs[idx]), targets[idx])
                        value_optimizer.zero_grad()
                        v_loss.backward()
                        value_optimizer.step()
                metrics["value_loss"] = v_loss.item()
            run.log(metrics | {"mean_episode_length": batch.lengths.float().mean().item()})
        for env in envs:
            env.close()
        return run.finish(networks)
