"""The tabular toolkit in one import: finite MDPs (mdp.py), exact dynamic programming (dp.py), sample-based
TD learning (td.py) and the schedules of its step sizes and exploration rates (schedules.py).

    from llmrl.classic.tabular import TabularMDP, value_iteration, policy_iteration, q_learning
"""
from .dp import (DPResult, greedy_policy, policy_evaluation, policy_iteration, policy_matrices, proper_policy,
                 q_from_v, q_value_iteration, value_iteration)
from .mdp import ARROWS, TabularEnv, TabularMDP
from .schedules import constant_schedule, linear_schedule, power_schedule
from .td import (TDResult, epsilon_greedy, epsilon_greedy_policy, q_learning, run_episodes, td0_evaluation,
                 td_policy_improvement)

__all__ = [
    "TabularMDP", "TabularEnv", "ARROWS",
    "DPResult", "value_iteration", "q_value_iteration", "policy_evaluation", "policy_iteration", "proper_policy",
    "q_from_v", "greedy_policy", "policy_matrices",
    "TDResult", "epsilon_greedy", "epsilon_greedy_policy", "constant_schedule", "linear_schedule", "power_schedule",
    "run_episodes", "q_learning", "td0_evaluation", "td_policy_improvement",
]
