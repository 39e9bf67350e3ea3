"""llmrl.objectives: the model-agnostic math of policy-gradient RL, one home for every equation.

Pure functions on torch tensors; the time/token axis is last and every reduction takes an explicit mask.
The classic gym agents and the LLM trainer both call these; nothing else re-derives them.
"""
from .advantages import (SEQUENCE_ESTIMATORS, TOKEN_ESTIMATORS, group_advantages, leave_one_out_advantages,
                         sequence_advantages, token_advantages, whiten, zero_std_groups)
from .baselines import (constant_baseline, optimal_baseline, policy_gradient_estimate, time_dependent_baseline,
                        value_loss)
from .dqn import dueling_q_values, importance_sampling_weights, n_step_sums, per_priorities
from .kl import (KL_ESTIMATORS, KL_GRADIENTS, AdaptiveKLController, FixedKLController, ProportionalKLController,
                 kl_estimate, kl_k1, kl_k2, kl_k3, kl_penalty)
from .losses import (AGGREGATIONS, LOSS_TYPES, LossType, aggregate, entropy, grpo_loss, huber_loss, kl_penalized_loss,
                     log_ratio, masked_mean, policy_gradient_loss, ppo_clip_loss, ppo_clip_objective, surrogate_loss,
                     token_means)
from .shaping import kl_shaped_rewards, overlong_penalty, token_level_rewards
from .preference import bradley_terry_loss, pairwise_accuracy
from .returns import discounted_returns, double_q_values, gae, n_step_returns, td_target, token_gae
from .trust_region import conjugate_gradient, fisher_vector_product, softmax_fisher_vector_product, trust_region_step

__all__ = [
    "discounted_returns", "n_step_returns", "td_target", "double_q_values", "gae", "token_gae",
    "constant_baseline", "time_dependent_baseline", "optimal_baseline", "policy_gradient_estimate", "value_loss",
    "group_advantages", "leave_one_out_advantages", "zero_std_groups", "whiten", "sequence_advantages",
    "SEQUENCE_ESTIMATORS", "TOKEN_ESTIMATORS", "token_advantages",
    "kl_k1", "kl_k2", "kl_k3", "kl_estimate", "kl_penalty", "KL_ESTIMATORS", "KL_GRADIENTS", "FixedKLController",
    "AdaptiveKLController", "ProportionalKLController", "kl_shaped_rewards", "overlong_penalty",
    "token_level_rewards",
    "AGGREGATIONS", "LOSS_TYPES", "LossType", "aggregate", "masked_mean", "token_means", "policy_gradient_loss",
    "log_ratio", "ppo_clip_objective", "ppo_clip_loss", "kl_penalized_loss", "grpo_loss", "entropy", "huber_loss",
    "surrogate_loss",
    "conjugate_gradient", "fisher_vector_product", "softmax_fisher_vector_product", "trust_region_step",
    "dueling_q_values", "n_step_sums", "per_priorities", "importance_sampling_weights",
    "bradley_terry_loss", "pairwise_accuracy",
]
