"""Run by tests/llm/test_engines.py (and bench/gpu_engines.py): the trainer under one engine, saving what the
callers compare.

    python -m torch.distributed.run --nproc_per_node N tests/llm/engine_check.py LABEL OUT SCENARIO [...]
    accelerate launch --config_file configs/accelerate/ds_zero2.yaml tests/llm/engine_check.py LABEL OUT ...

LABEL names the result files; fsdp2 and fsdp2-ac (with FSDP's activation checkpointing) first apply
tests/llm/cpu_fsdp.py's shim (FSDP2 on CPU), any other label leaves the engine to the launch (the trainer builds
its Accelerator from the environment: one process, DDP, FSDP2 or DeepSpeed).
Environment: LLMRL_CHECK_MODEL = a model directory (default: tests/llm/tiny.py's tiny model with a trained-looking
LoRA adapter; a directory gets a fresh LoRA r16 adapter), LLMRL_CHECK_DTYPE (default float32).
SCENARIO:
  optimize  one fixed generation batch of 4 prompts x G=4 (each process its share) with reference log-probs
            and a KL term, 2 passes (num_iterations=2) of 2 micro-batches
  optimize_full  the same with full fine-tuning (every weight trains; the reference is a frozen copy)
  train     3 steps end to end (sampling, reference, KL, checkpoint every step, final save, greedy evaluation),
            then a second trainer resumed from checkpoint-1 of a copy of the run goes on to step 3
Each writes OUT/<scenario>_<label>_<world>.pt on the main process: trained LoRA weights (full tensors, gathered
independently of llmrl's engines module), optimizer steps counted at torch's AdamW, and what the scenario adds.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

MODEL = os.environ.get("LLMRL_CHECK_MODEL")
DTYPE = os.environ.get("LLMRL_CHECK_DTYPE", "float32")
ADAM_STEPS = [0]


def _count(optimizer, args, kwargs):
    if type(optimizer) is torch.optim.AdamW:  # the base optimizer under every engine (DeepSpeed wraps it)
        ADAM_STEPS[0] += 1


def make_trainer(output_dir, lora=True, **overrides):
    from tests.llm.tiny import length_reward, tiny_dataset, tiny_trainer

    if MODEL is None:
        return tiny_trainer(output_dir, lora=lora, dtype=DTYPE, **overrides)
    if not lora:
        overrides["lora_r"] = 0
    from llmrl.llm.config import GRPOConfig
    from llmrl.llm.trainer import GRPOTrainer

    kw = dict(model=MODEL, output_dir=str(output_dir), max_steps=2, per_device_batch_size=8, num_generations=4,
              max_new_tokens=10, micro_batch_size=8, report_to=["none"], learning_rate=1e-2, seed=0, dtype=DTYPE,
              overwrite_output_dir=True, system_prompt="")
    kw.update(overrides)
    return GRPOTrainer(GRPOConfig(**kw), reward_funcs=[length_reward], train_dataset=tiny_dataset())


def trained_weights(tr) -> dict:
    """The trained weights as full tensors (FSDP2: DTensor.full_tensor; ZeRO-3: DeepSpeed's gather)."""
    from torch.distributed.tensor import DTensor

    params = [(n.replace("_checkpoint_wrapped_module.", ""), p) for n, p in tr.model.named_parameters()
              if p.requires_grad]  # (torch's activation-checkpoint wrapper renames the layers' parameters)
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().clone().cpu() for n, p in params}
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone().cpu() for n, p in params}


def reloaded(acc, path: str) -> tuple[dict, float]:
    """The adapter saved at `path`, loaded with peft's from_pretrained onto a fresh copy of the base model, and the
    largest difference between the merged model saved at `path`-merged and that adapter merged here."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmrl.llm.engines import whole_model_loading
    from llmrl.llm.model import load_policy, resolve_dtype
    from tests.llm.tiny import tiny_model

    with whole_model_loading(acc):  # one process loads it: not partitioned over all of them (ZeRO-3)
        base = tiny_model(0)[0] if MODEL is None else load_policy(MODEL, None, resolve_dtype(DTYPE))[0]
        model = PeftModel.from_pretrained(base, path)
        adapter = {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n}
        merged = AutoModelForCausalLM.from_pretrained(path + "-merged").state_dict()
    want = model.merge_and_unload().state_dict()
    assert merged.keys() == want.keys(), sorted(set(merged) ^ set(want))[:3]
    return adapter, max((merged[k].float() - want[k].float()).abs().max().item() for k in want)


def main():
    label, out = sys.argv[1], sys.argv[2]
    if label.startswith("fsdp2"):
        from tests.llm.cpu_fsdp import force_cpu_fsdp2

        force_cpu_fsdp2(auto_wrap_policy="transformer_based_wrap", state_dict_type="SHARDED_STATE_DICT",
                        activation_checkpointing=label == "fsdp2-ac")
    torch.set_num_threads(1)
    register_optimizer_step_post_hook(_count)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    for scenario in sys.argv[3:]:
        result = {"optimize": optimize, "optimize_full": lambda *a: optimize(*a, lora=False),
                  "train": train}[scenario](out, label, world, rank)
        if rank == 0:
            torch.save(result, os.path.join(out, f"{scenario}_{label}_{world}.pt"))
    from tests.llm.tiny import end_process_group

    end_process_group()


def optimize(out, label, world, rank, lora=True):
    from llmrl import objectives as O
    from llmrl.llm import engines
    from llmrl.llm.trainer import RolloutBatch

    G, prompts_total = 4, 4
    B = prompts_total // world
    tr = make_trainer(os.path.join(out, f"opt_{label}_{world}_{lora}"), lora, per_device_batch_size=B * G,
                      micro_batch_size=B * G // 2, beta=0.04, max_grad_norm=0.5, learning_rate=1e-2 if lora else 1e-3,
                      num_iterations=2)
    ids, mask = tr._tokenize_prompts(["What is 1 + 2?", "hi", "7 - 3 = ?", "a longer question here"])
    g = torch.Generator().manual_seed(0)
    C = 7
    comp = torch.randint(4, len(tr.tok), (prompts_total * G, C), generator=g).to(ids.device)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (prompts_total * G, 1), generator=g)).long().to(ids.device)
    rewards = torch.randint(0, 3, (prompts_total * G,), generator=g).float().to(ids.device)
    mine = slice(rank * B * G, (rank + 1) * B * G)
    batch = RolloutBatch(ids[rank * B:(rank + 1) * B], mask[rank * B:(rank + 1) * B], comp[mine], cmask[mine],
                         torch.arange(B, device=ids.device).repeat_interleave(G), rewards[mine],
                         O.group_advantages(rewards[mine], G), beta_loss=0.04)
    batch.ref_logp = tr._reference_logprobs(batch)
    steps_before = ADAM_STEPS[0]
    stats = tr.optimize(batch)
    return {"weights": trained_weights(tr), "adam_steps": ADAM_STEPS[0] - steps_before,
            "ref_logp": tr.acc.gather(batch.ref_logp.contiguous()).cpu(), "loss": stats["loss"],
            "grad_norm": stats["grad_norm"],
            "reference": "adapter copy" if tr.reference.adapter_copy else "model copy" if tr.reference.copy else
            "adapter disabled", "engine": engines.name(tr.acc),
            "sharded": any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in tr.model.parameters()),
            "lean_modules": sum("forward" in vars(m) for m in tr.model.modules())}  # activation_memory switched


def train(out, label, world, rank):
    from llmrl.llm import engines
    from tests.llm.tiny import tiny_dataset

    run = os.path.join(out, f"run_{label}_{world}")
    kw = dict(max_steps=3, save_steps=1, save_total_limit=3, beta=0.04, micro_batch_size=4, max_new_tokens=8,
              lr_scheduler="linear")
    tr = make_trainer(run, **kw)
    steps_before, t0 = ADAM_STEPS[0], time.perf_counter()
    history = tr.train()
    train_time = time.perf_counter() - t0
    adam_steps = ADAM_STEPS[0] - steps_before
    final = tr.save_final(merged=True)
    weights = trained_weights(tr)
    greedy = [row["completion"] for row in tr.evaluate(tiny_dataset(8), n=8)["samples"]]
    tr.acc.wait_for_everyone()
    resumed_dir = run + "_resumed"
    if rank == 0:  # the run as it was after step 1 (a kill after checkpoint-1)
        shutil.rmtree(resumed_dir, ignore_errors=True)
        shutil.copytree(run, resumed_dir, ignore=shutil.ignore_patterns("checkpoint-2", "checkpoint-3", "final"))
    tr.acc.wait_for_everyone()
    again = make_trainer(resumed_dir, resume="latest", overwrite_output_dir=False, **kw)
    again.train()
    result = {"weights": weights, "resumed": trained_weights(again), "adam_steps": adam_steps,
              "losses": [m["loss"] for m in history], "greedy": greedy, "rewards": [m["reward"] for m in history],
              "kl": [m["kl"] for m in history], "lr": [m["learning_rate"] for m in history],
              "engine": engines.name(tr.acc), "train_time": train_time,
              "files": sorted(os.listdir(os.path.join(run, "checkpoint-3")))}
    if rank == 0:
        result["reloaded"], result["merged_diff"] = reloaded(tr.acc, final)
    again.close()
    return result


if __name__ == "__main__":
    main()
