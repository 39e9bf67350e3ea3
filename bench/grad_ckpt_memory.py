"""Memory effect of --gradient_checkpointing on the bundled model: peak RSS of ONE forward + backward of the GRPO
log-prob pass (the trainer's LogprobModel, LoRA r16 on all linear layers, fp32), each setting in its own process.
It measures memory, not time (the CPUs here are shared: step times would not be benchmarks).

    python bench/grad_ckpt_memory.py                    # the three settings below, one process each; prints a table
    python bench/grad_ckpt_memory.py one SETTING        # one setting: off-shared | off-naive | on

Settings: off-shared (the trainer's default: shared-prefix log-probs), off-naive (every prompt + completion whole,
no checkpointing), on (--gradient_checkpointing: the trainer's gradient pass then runs every sequence whole).
Workload: 2 prompts x G=8 completions, 64 prompt tokens + 128 completion tokens (random token ids).
"""
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SETTINGS = ("off-shared", "off-naive", "on")
PROMPTS, G, PROMPT_LEN, COMPLETION_LEN = 2, 8, 64, 128


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def one(setting: str) -> None:
    import torch

    from llmrl.llm import engines
    from llmrl.llm.model import LoraSettings, load_policy
    from llmrl.llm.trainer import LogprobModel

    torch.manual_seed(0)
    model, _ = load_policy("bundled", LoraSettings(16, 32), torch.float32)
    if setting == "on":
        engines.enable_gradient_checkpointing(model)
    model.train()
    policy = LogprobModel(model, 1.0, 256, shared_prefix=setting == "off-shared", checkpointed=setting == "on")
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(0, vocab, (PROMPTS, PROMPT_LEN), generator=g)
    completion_ids = torch.randint(0, vocab, (PROMPTS * G, COMPLETION_LEN), generator=g)
    ones = torch.ones_like
    before = rss_mib()
    logp, _ = policy(prompt_ids, ones(prompt_ids), completion_ids, ones(completion_ids),
                     torch.arange(PROMPTS).repeat_interleave(G))
    logp.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{setting}\t{before:.0f}\t{peak:.0f}\t{peak - before:.0f}", flush=True)


def main() -> None:
    print("setting     RSS before (MiB)  peak RSS (MiB)  peak - before (MiB)")
    for setting in SETTINGS:
        res = subprocess.run([sys.executable, __file__, "one", setting], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        name, before, peak, growth = res.stdout.strip().splitlines()[-1].split("\t")
        print(f"{name:<12}{before:>17}{peak:>16}{growth:>21}", flush=True)


if __name__ == "__main__":
    one(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "one" else main()
