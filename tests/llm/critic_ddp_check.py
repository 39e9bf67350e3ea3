"""Run by tests/llm/test_multiprocess_critic.py under torchrun: two training steps (public `step()`, sampling
replaced by fixed generation batches of 4 prompts x G=4, each process taking its share, completions right-padded to
the longest of ITS share) with a per-token advantage estimator and a KL penalty in the rewards; each rank saves its
advantages, its policy and critic weights and the logged metrics.

    python -m torch.distributed.run --nproc_per_node N tests/llm/critic_ddp_check.py OUT_DIR ESTIMATOR [...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

torch.set_num_threads(1)

from llmrl.llm.trainer import TIMING_METRICS, RolloutBatch  # noqa: E402
from tests.llm.tiny import end_process_group, tiny_trainer  # noqa: E402

out = sys.argv[1]
world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
G, prompts_total = 4, 4
B = prompts_total // world
TEXTS = ["What is 1 + 2?", "hi", "7 - 3 = ?", "a longer question here"]


def fixed_batch(tr, step: int) -> RolloutBatch:
    """Step `step`'s generation batch, this rank's prompts and their completions."""
    ids, mask = tr._tokenize_prompts(TEXTS[rank * B:(rank + 1) * B])
    g = torch.Generator().manual_seed(step)
    C, N = 9, prompts_total * G
    comp = torch.randint(4, len(tr.tok), (N, C), generator=g)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (N, 1), generator=g)).long()
    rewards = torch.randn(N, generator=g)
    mine = slice(rank * B * G, (rank + 1) * B * G)
    width = int(cmask[mine].sum(-1).max())  # right-padded to the longest completion of this share only
    info = {"prompts": TEXTS[rank * B:(rank + 1) * B], "texts": ["-"] * (B * G), "per_func": {"fixed": rewards[mine]},
            "truncated": torch.zeros(B * G, dtype=torch.bool), "raw_rewards": rewards[mine],
            "times": {}}  # no sampler ran: no phase times
    return RolloutBatch(ids, mask, comp[mine, :width], cmask[mine, :width], torch.arange(B).repeat_interleave(G),
                        rewards[mine].clone(), torch.zeros(B * G), info=info)


def run(estimator: str):
    tr = tiny_trainer(os.path.join(out, f"run_{estimator}"), advantage=estimator, per_device_batch_size=B * G,
                      micro_batch_size=3, beta=0.1, num_iterations=2, learning_rate=1e-2, gamma=0.9,
                      entropy_coef=0.01, loss_type="dapo")
    with torch.no_grad():  # a reference away from the policy: the KL term is not zero
        for n, p in tr.model.named_parameters():
            if ".reference." in n and "lora_B" in n:
                p.mul_(-1.0)
    batches = iter([fixed_batch(tr, s) for s in range(2)])
    tr._generate = lambda rows, beta_loss: next(batches)
    advantages, metrics = [], []
    for _ in range(2):
        m, batch = tr.step()
        advantages.append(batch.advantages)
        metrics.append({k: v for k, v in m.items() if k not in TIMING_METRICS})
    trained = lambda model: {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}  # noqa: E731
    torch.save({"advantages": advantages, "metrics": metrics, "policy": trained(tr.model),
                "critic": trained(tr.critic.model) if tr.critic is not None else {}},
               os.path.join(out, f"{estimator}_{world}_{rank}.pt"))


for name in sys.argv[2:]:  # several estimators in one launch (one process group)
    run(name)
end_process_group()
