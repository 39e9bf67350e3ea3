"""Classic RL on toy MDPs and gymnasium: tabular DP and TD (`tabular`), the DQN family (`dqn`), and the
policy-gradient agents (`reinforce`, `a2c`, `ppo` with its KL-penalized variant, `trpo`). Every loss, return and
advantage comes from `llmrl.objectives`."""
from .a2c import A2CConfig, load_a2c, train_a2c
from .common import evaluate, make_env, make_vec_env
from .dqn import DQNAgent, DQNConfig, DQNResult, train_dqn
from .ppo import PPOConfig, load_ppo, train_ppo
from .reinforce import ReinforceConfig, load_reinforce, train_reinforce
from .tabular import *  # noqa: F401,F403  (TabularMDP, value_iteration, q_learning, ...)
from .tabular import __all__ as _tabular_all
from .trpo import TRPOConfig, load_trpo, train_trpo

__all__ = [*_tabular_all, "make_env", "make_vec_env", "evaluate", "DQNConfig", "DQNAgent", "DQNResult", "train_dqn",
           "ReinforceConfig", "train_reinforce", "load_reinforce", "A2CConfig", "train_a2c", "load_a2c", "PPOConfig",
           "train_ppo", "load_ppo", "TRPOConfig", "train_trpo", "load_trpo"]
