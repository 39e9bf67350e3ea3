"""Run the GRPO recipe on the tiny model, as a user would from the command line (used by subprocess tests).

    python tests/llm/run_tiny.py MODEL_DIR DATA_JSONL [recipe flags...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

torch.set_num_threads(1)

from llmrl.llm.rewards import REWARD_FUNCTIONS  # noqa: E402
from tests.llm.tiny import length_reward  # noqa: E402

REWARD_FUNCTIONS["length"] = length_reward
# a 0/1 reward whose value varies between sampled completions (pass@k needs one; the tiny model never solves a sum)
REWARD_FUNCTIONS["length01"] = lambda prompts, completions, **kw: [float(len(c) % 2 == 0) for c in completions]

if __name__ == "__main__":
    from llmrl.utils import cli_main
    from recipes.grpo_gsm8k import main
    model_dir, data = sys.argv[1], sys.argv[2]
    eval_data = ["--eval_dataset", data] if data.endswith(".jsonl") else []  # a file has no test split
    flags = sys.argv[3:]
    trust_region = "--optimizer" in flags and flags[flags.index("--optimizer") + 1] != "adamw"
    lr = [] if trust_region else ["--learning_rate", "1e-2"]  # trpo/npg refuse a learning rate they do not use
    cli_main(lambda: main(["--model", model_dir, "--dataset", data, *eval_data, "--reward_funcs", "length",
                           "--dtype", "float32", "--per_device_batch_size", "8", "--num_generations", "4",
                           "--max_new_tokens", "8", *lr, "--report_to", "none", "--system_prompt", "",
                           *flags]))
