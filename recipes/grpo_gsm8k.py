"""GRPO on grade-school math: sample G completions per question, reward the correct final answer (and the
"The answer is N." format), update a LoRA adapter with the clipped group-relative objective. The same job as
`llmrl grpo`; its flow (evaluate before, train, evaluate after, save) reads top to bottom in llmrl/scripts/grpo.py.

    accelerate launch recipes/grpo_gsm8k.py                                  # bundled model + bundled data
    python recipes/grpo_gsm8k.py --dataset ../shared/data/gsm8k --eval_dataset ../shared/data/gsm8k \
        --eval_examples 200 --max_steps 100
    python recipes/grpo_gsm8k.py --eval_only --adapter runs/grpo/final --eval_examples 200

Every GRPOConfig field is a flag (`--help` lists them); `--config FILE.yaml` reads them from a file. The run
directory gets metrics.jsonl (plot it with `python -m llmrl.plot RUN_DIR`), completions.jsonl, TensorBoard logs,
checkpoints, the final adapter with its model card, and eval.json.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.scripts.grpo import main  # noqa: E402
from llmrl.utils import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main(main)
