"""Classic RL on toy MDPs and gymnasium: tabular DP and TD (`tabular`), the DQN family (`dqn`), and the
policy-gradient agents (`reinforce`, `a2c`, `ppo` with its KL-penalized variant, `trpo`). Every loss, return and
advantage comes from `llmrl.objectives`; every deep agent follows one run convention (`run`): a config with
`env_id`, `seed`, `total_timesteps`, `output_dir`, ..., a `RunResult`, and agents saved in OUTPUT_DIR/agent and
read back by `load_agent`."""
from .a2c import A2CConfig, train_a2c
from .common import evaluate, make_env, make_vec_env
from .dqn import DQNConfig, train_dqn
from .ppo import PPOConfig, train_ppo
from .reinforce import ReinforceConfig, train_reinforce
from .run import Agent, OnPolicyConfig, RunConfig, RunResult, load_agent
from .tabular import *  # noqa: F401,F403  (TabularMDP, value_iteration, q_learning, ...)
from .tabular import __all__ as _tabular_all
from .trpo import TRPOConfig, train_trpo

__all__ = [*_tabular_all, "make_env", "make_vec_env", "evaluate", "RunConfig", "OnPolicyConfig", "RunResult",
           "Agent", "load_agent", "DQNConfig", "train_dqn", "ReinforceConfig", "train_reinforce", "A2CConfig",
           "train_a2c", "PPOConfig", "train_ppo", "TRPOConfig", "train_trpo"]
