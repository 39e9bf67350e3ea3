"""The LLM side of llmrl: load a causal LM (+LoRA), sample G completions per prompt, score them with reward
functions or reward models, and train with GRPO-family objectives from llmrl.objectives; train reward models."""
from .config import GRPOConfig
from .model import LoraSettings, load_policy, load_tokenizer
from .rewards import REWARD_FUNCTIONS, extract_gsm8k_answer, format_reward, gsm8k_reward, score_completions
from .reward_model import RewardModelScorer, load_reward_model, sequence_scores
from .reward_trainer import RewardConfig, RewardTrainer
from .trainer import GRPOTrainer, RolloutBatch

__all__ = ["GRPOConfig", "GRPOTrainer", "RolloutBatch", "LoraSettings", "load_policy", "load_tokenizer",
           "REWARD_FUNCTIONS", "extract_gsm8k_answer", "gsm8k_reward", "format_reward", "score_completions",
           "RewardConfig", "RewardTrainer", "RewardModelScorer", "load_reward_model", "sequence_scores"]
