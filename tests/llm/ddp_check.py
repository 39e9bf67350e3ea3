"""Run by tests/llm/test_multiprocess.py under torchrun: the same fixed generation batch of 4 prompts x G=4 is
optimized by 1 process (all of it) or 2 processes (2 prompts each); each rank saves its updated weights.

    python -m torch.distributed.run --nproc_per_node N tests/llm/ddp_check.py OUT_DIR LOSS_TYPE [LOSS_TYPE ...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

torch.set_num_threads(1)

from llmrl import objectives as O  # noqa: E402
from llmrl.llm.trainer import RolloutBatch  # noqa: E402
from tests.llm.tiny import end_process_group, tiny_trainer  # noqa: E402

out = sys.argv[1]
world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
G, prompts_total = 4, 4
B = prompts_total // world


def run(loss_type: str):
    tr = tiny_trainer(os.path.join(out, "run"), per_device_batch_size=B * G, micro_batch_size=3, loss_type=loss_type,
                      max_grad_norm=0, learning_rate=1e-2, num_iterations=2)
    # the whole batch, identical on every rank; this rank keeps its own prompts and their completions
    texts = ["What is 1 + 2?", "hi", "7 - 3 = ?", "a longer question here"]
    ids, mask = tr._tokenize_prompts(texts)
    g = torch.Generator().manual_seed(0)
    C = 7
    comp = torch.randint(4, len(tr.tok), (prompts_total * G, C), generator=g)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (prompts_total * G, 1), generator=g)).long()
    rewards = torch.randint(0, 3, (prompts_total * G,), generator=g).float()
    mine = slice(rank * B * G, (rank + 1) * B * G)
    r = RolloutBatch(ids[rank * B:(rank + 1) * B], mask[rank * B:(rank + 1) * B], comp[mine], cmask[mine],
                torch.arange(B).repeat_interleave(G), rewards[mine], O.group_advantages(rewards[mine], G))
    tr.optimize(r)
    torch.save({k: v.detach() for k, v in tr.model.named_parameters() if v.requires_grad},
               os.path.join(out, f"weights_{loss_type}_{world}_{rank}.pt"))


ADVANTAGES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "group"), ("rloo", "group"),
              ("reinforce", "group")]


def advantages():
    """Each advantage mode on this rank's share of one fixed global batch of rewards (batch statistics must be over
    the global batch, so the concatenated shares equal the one-process result)."""
    tr = tiny_trainer(os.path.join(out, "adv"), per_device_batch_size=B * G)
    rewards = torch.randn(prompts_total * G, generator=torch.Generator().manual_seed(1)) * 3 + 1
    mine = rewards[rank * B * G:(rank + 1) * B * G]
    got = {}
    for adv, scale in ADVANTAGES:
        tr.cfg.advantage, tr.cfg.scale_rewards = adv, scale
        got[f"{adv}_{scale}"] = tr.advantages(mine)
    torch.save(got, os.path.join(out, f"advantages_{world}_{rank}.pt"))


def schedule():
    """The learning-rate schedule advances one step per optimizer step, whatever the process count."""
    tr = tiny_trainer(os.path.join(out, "sched"), per_device_batch_size=B * G, lr_scheduler="linear",
                      learning_rate=1e-2, max_steps=4)
    lrs = []
    for _ in range(3):
        tr.step()
        lrs.append(tr.sched.get_last_lr()[0])
    torch.save(lrs, os.path.join(out, f"schedule_{world}_{rank}.pt"))


def dynamic_sampling():
    """Each rank fills its batch with groups that carry a learning signal; the ranks stay in lockstep."""
    from tests.llm.test_dapo import _flat_on_some_prompts
    tr = tiny_trainer(os.path.join(out, "dyn"), per_device_batch_size=B * G, dynamic_sampling=True,
                      reward_funcs=[_flat_on_some_prompts], max_new_tokens=6, seed=3)
    info = []
    for _ in range(3):
        metrics, batch = tr.step()
        info.append({"rounds": batch.info["dynamic_sampling_rounds"], "pos": tr.sampler.pos,
                     "flat": bool(O.zero_std_groups(batch.rewards, G).any()), "n": len(batch),
                     "dropped": metrics["dynamic_sampling/dropped_groups"]})
    torch.save({"info": info, "weights": {k: v.detach() for k, v in tr.model.named_parameters() if v.requires_grad}},
               os.path.join(out, f"dynamic_{world}_{rank}.pt"))


for loss in sys.argv[2:]:  # several loss types in one launch (one process group)
    {"advantages": advantages, "dynamic": dynamic_sampling, "schedule": schedule}.get(loss, lambda: run(loss))()
end_process_group()
