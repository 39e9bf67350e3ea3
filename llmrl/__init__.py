"""llmrl: policy-gradient RL from tabular MDPs to GRPO fine-tuning of causal language models.

- llmrl.objectives: the math (returns, GAE, baselines, group advantages, KL, PPO/GRPO losses, TRPO step).
- llmrl.classic: tabular MDPs and dynamic programming, TD/Q-learning, DQN family, gym policy-gradient agents.
- llmrl.llm: model loading, sampling, log-probs, rewards and the GRPO trainer for Hugging Face causal LMs.
"""
__version__ = "0.1.0"
