"""Run by tests/llm/test_trust_region.py under torchrun: one fixed generation batch of 4 prompts x G=4 gets one
trust-region update from 1 process (all of it) or 2 processes (2 prompts each); each rank saves its updated
trainable weights and the update's statistics.

    python -m torch.distributed.run --nproc_per_node N tests/llm/trpo_ddp_check.py OUT_DIR OPTIMIZER:LOSS_TYPE ...
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

torch.set_num_threads(1)

from tests.llm.trpo_tiny import fixed_batch, trpo_trainer  # noqa: E402
from tests.llm.tiny import end_process_group  # noqa: E402

out = sys.argv[1]
world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))

for case in sys.argv[2:]:  # several cases in one launch (one process group)
    optimizer, loss_type = case.split(":")
    tr = trpo_trainer(os.path.join(out, "run"), per_device_batch_size=16 // world, micro_batch_size=3,
                      optimizer=optimizer, loss_type=loss_type, max_kl=0.002)
    stats = tr.optimize(fixed_batch(tr, rank, world))
    torch.save({"weights": {k: v.detach() for k, v in tr.model.named_parameters() if v.requires_grad},
                "stats": stats}, os.path.join(out, f"{optimizer}_{loss_type}_{world}_{rank}.pt"))
end_process_group()
