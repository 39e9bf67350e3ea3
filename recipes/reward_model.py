"""Train a reward model on preference pairs (TRL's chosen/rejected format) with the Bradley-Terry loss: a
causal-LM backbone with a scalar head, LoRA by default, pairwise accuracy on held-out pairs. The same job as
`llmrl rm`; it reads top to bottom in llmrl/scripts/reward_model.py.

    llmrl preferences --output_dir runs/arithmetic_preferences         # pairs from the bundled model
    python recipes/reward_model.py --dataset runs/arithmetic_preferences --eval_dataset runs/arithmetic_preferences

Every RewardConfig field is a flag (`--help` lists them); final/ holds the merged model, which
`AutoModelForSequenceClassification.from_pretrained` and `llmrl.llm.RewardModelScorer` load (GRPO: --reward_model).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.scripts.reward_model import main  # noqa: E402
from llmrl.utils import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main(main)
