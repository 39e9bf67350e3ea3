"""Reward models on tiny models: the score is the model's own score of the unpadded sequence whatever the padding
(pad = eos included); training separates a toy set; resume equals an uninterrupted run; the saved model reloads
with from_pretrained; 2 processes equal 1; a reward model is a reward source of the GRPO trainer; preference data
from sampled completions is ordered by the checker; errors name the column or the model at fault."""
import json
import os
import random
import subprocess
import sys

import datasets
import pytest
import torch
from safetensors.torch import load_file

from llmrl.llm.preference_data import PreferenceDataConfig, generate_preference_pairs, label_pairs
from llmrl.llm.reward_model import (RewardModelScorer, add_reward_lora, conversation_text, load_reward_model,
                                    pad_sequences, sequence_scores, tokenize_conversation)
from llmrl.llm.model import LoraSettings
from llmrl.llm.reward_trainer import RewardConfig, RewardTrainer, tokenize_pairs
from tests.llm.tiny import dies_after, save_tiny, tiny_dataset, tiny_model, tiny_reward_model, tiny_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING = {"time", "step_time"}


def own_score(model, ids: list[int]) -> float:
    """The model's own forward on ONE unpadded sequence (transformers reads the last position of a batch of 1)."""
    pad, model.config.pad_token_id = model.config.pad_token_id, None
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    finally:
        model.config.pad_token_id = pad


def toy_pairs(n: int, seed: int, chat: bool = False) -> datasets.Dataset:
    """A separable preference set: the chosen response is digits, the rejected one letters."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
        r = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6)))
        if chat:
            rows.append({"prompt": [{"role": "user", "content": "say something"}],
                         "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
        else:
            rows.append({"chosen": c, "rejected": r})
    return datasets.Dataset.from_list(rows)


def lora_reward_model(seed=0):
    model, tok = tiny_reward_model(seed)
    return add_reward_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1)), tok


def rm_config(out, **kw):
    base = dict(output_dir=str(out), report_to=["none"], dtype="float32", per_device_batch_size=4,
                micro_batch_size=2, max_steps=6, save_steps=2, eval_steps=3, learning_rate=1e-2, seed=0)
    return RewardConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("side", ["left", "right"])
def test_score_is_read_at_the_last_real_token_whatever_the_padding(side):
    """pad = eos and sequences ending in eos: transformers' own batched pooling (first pad id) reads the wrong
    position; the last real token by the attention mask gives each sequence's unpadded score."""
    model, tok = tiny_reward_model()
    eos = tok.eos_token_id
    model.config.pad_token_id = eos
    seqs = [tok("hello there", add_special_tokens=False)["input_ids"] + [eos],
            tok("7 + 5 = 12", add_special_tokens=False)["input_ids"],
            tok("ok", add_special_tokens=False)["input_ids"] + [eos]]
    ids, mask = pad_sequences(seqs, eos, side)
    got = sequence_scores(model, ids, mask)
    want = torch.tensor([own_score(model, s) for s in seqs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if side == "right":  # the failure this guards against: transformers stops at the first eos
        with torch.no_grad():
            hf = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        assert not torch.allclose(hf, want, atol=1e-3)


def test_scorer_scores_the_conversation_batched_with_its_own_template():
    """RewardModelScorer(model, tokenizer) on chat prompts: the prompt + completion as the assistant turn through
    the chat template, equal to the model's own score of each conversation alone, for any batch size or side."""
    model, tok = tiny_reward_model(seed=1)
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"What is {i} + 1?"}]
               for i in range(5)]
    completions = ["The answer is 1.", "2", "", "The answer is 4 apples, I think.", "5."]
    want = [own_score(model, tok(tok.apply_chat_template(p + [{"role": "assistant", "content": c}], tokenize=False),
                                 add_special_tokens=False)["input_ids"]) for p, c in zip(prompts, completions)]
    for side, bs in [("left", 2), ("right", 3), ("left", 16)]:
        tok.padding_side = side
        got = RewardModelScorer(model, tok, batch_size=bs)(prompts=prompts, completions=completions, answer=[0] * 5)
        assert got == pytest.approx(want, abs=1e-5)
    text = RewardModelScorer(model, tok)(prompts=["Q: 2+2? A:"], completions=[" 4"])
    assert text == pytest.approx([own_score(model, tok("Q: 2+2? A: 4")["input_ids"])], abs=1e-5)


def test_conversation_formats_follow_trl():
    _, tok = tiny_reward_model()
    user, reply = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}]
    full = tok.apply_chat_template(user + reply, tokenize=False)
    assert conversation_text(user, "yo", tok) == (full, True)          # explicit prompt, chat
    assert conversation_text(user, reply, tok) == (full, True)         # explicit prompt, assistant messages
    assert conversation_text(None, user + reply, tok) == (full, True)  # implicit prompt, chat
    assert conversation_text("Q: hi\nA:", " yo", tok) == ("Q: hi\nA: yo", False)
    assert conversation_text(None, "all in one", tok) == ("all in one", False)
    with pytest.raises(ValueError, match="both as text or both as chat messages"):
        conversation_text("text prompt", reply, tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template is not set"):  # transformers' own one-line error
        conversation_text(user, "yo", tok)


# ---------------------------------------------------------------------------------------------- training
def test_training_separates_a_toy_set_and_the_saved_model_reloads(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = lora_reward_model()
    cfg = rm_config(tmp_path, max_steps=40, per_device_batch_size=8, micro_batch_size=3, eval_steps=20,
                    save_steps=0, learning_rate=1e-2, lr_scheduler="constant")
    tr = RewardTrainer(cfg, model, tok, toy_pairs(64, 0, chat=True), toy_pairs(24, 1, chat=True))
    history = tr.train()
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    first_eval = next(r for r in rows if r["step"] == 0)
    assert first_eval["eval/accuracy"] < 1.0
    assert history[-1]["eval/accuracy"] == 1.0 and history[-1]["eval/pairs"] == 24
    assert sum(h["loss"] for h in history[-5:]) / 5 < 0.2 * history[0]["loss"]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 20, 40]
    assert os.listdir(tmp_path / "checkpoint-40")  # the last step is always checkpointed

    out = tr.save_final()
    pairs = toy_pairs(6, 2, chat=True)
    seqs = [tokenize_conversation(tok, row["prompt"], row[k]) for row in pairs for k in ("chosen", "rejected")]
    ids, mask = pad_sequences(seqs, tok.pad_token_id, "left")
    with torch.no_grad():
        trained = sequence_scores(tr.model.eval(), ids, mask)  # eval: no LoRA dropout
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(reloaded).__name__ == "LlamaForSequenceClassification"
    torch.testing.assert_close(torch.tensor([own_score(reloaded, s) for s in seqs]), trained, atol=1e-4, rtol=1e-4)
    scorer = RewardModelScorer(out)  # path: model and tokenizer from the saved directory
    got = scorer([r["prompt"] for r in pairs], [r["chosen"][0]["content"] for r in pairs])
    assert got == pytest.approx(trained[0::2].tolist(), abs=1e-4)
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template


@pytest.mark.parametrize("how", ["config", "trl"])
def test_resume_equals_an_uninterrupted_run(tmp_path, how):
    """Killed after step 3 (checkpoints at 2), resumed from 'latest' (config.resume, or TRL's
    train(resume_from_checkpoint=True) on a trainer built over the run): same weights and metrics as a run that
    never stopped (LoRA dropout on, so the RNG state must come back too)."""
    def trainer(out, **kw):
        model, tok = lora_reward_model()
        return RewardTrainer(rm_config(out, **kw), model, tok, toy_pairs(20, 0), toy_pairs(8, 1))

    a = trainer(tmp_path / "a")
    a.train()

    b = trainer(tmp_path / "b")
    dies_after(b, 4)  # after step 4's update, before its log and checkpoint
    with pytest.raises(KeyboardInterrupt):
        b.train()
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint-2", "config.json", "metrics.jsonl"]
    if how == "config":
        b = trainer(tmp_path / "b", resume="latest")
        assert b.step_count == 0
        b.train()
    else:
        kept = (tmp_path / "b" / "metrics.jsonl").read_text()
        with pytest.raises(FileExistsError, match="already holds a run"):  # a plain train() over it: refused
            trainer(tmp_path / "b").train()
        assert (tmp_path / "b" / "metrics.jsonl").read_text() == kept
        b = trainer(tmp_path / "b")
        b.train(resume_from_checkpoint=True)
    assert b.step_count == 6

    wa = {k: v for k, v in a.model.named_parameters() if v.requires_grad}
    wb = {k: v for k, v in b.model.named_parameters() if v.requires_grad}
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def metrics(run):
        lines = open(tmp_path / run / "metrics.jsonl")
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]
    assert metrics("a") == metrics("b")
    assert [m["step"] for m in metrics("a")] == [0, 1, 2, 3, 4, 5, 6]
    saved = load_file(tmp_path / "b" / "checkpoint-6" / "model.safetensors")
    assert set(saved) == {"model." + k for k in wa}  # only the adapter and the head go into checkpoints


def test_full_fine_tuning_and_a_model_loaded_by_path(tmp_path):
    """lora_r=0 trains every weight; a causal-LM directory gets a new scalar head (load_reward_model)."""
    model_dir = save_tiny(tmp_path / "lm")
    cfg = rm_config(tmp_path / "run", model=model_dir, lora_r=0, max_steps=4, learning_rate=1e-3, eval_steps=0,
                    report_to=["tensorboard"])
    tr = RewardTrainer(cfg, train_dataset=toy_pairs(16, 0))
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    assert type(tr.model).__name__ == "LlamaForSequenceClassification" and not tr.is_peft
    tr.train()
    assert all(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())
    plain = RewardTrainer(rm_config(tmp_path / "lora"), *tiny_reward_model(), train_dataset=toy_pairs(16, 0))
    assert plain.is_peft and plain.model.peft_config["default"].r == 16  # a model passed in gets the config's LoRA
    with pytest.raises(ValueError, match="lora_r=0 asks for full fine-tuning"):
        RewardTrainer(rm_config(tmp_path / "full", lora_r=0), *lora_reward_model(), train_dataset=toy_pairs(16, 0))
    assert tr.eval_pairs and "eval/accuracy" in json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(tmp_path / "run" / "tb") for f in fs)


def test_lora_on_a_bfloat16_backbone(tmp_path):
    """The adapter and the head stay fp32 over a bf16 backbone: the head gets its input in its own dtype."""
    model, tok = tiny_reward_model()
    model = add_reward_lora(model.to(torch.bfloat16), LoraSettings(r=4, alpha=8))
    assert model.get_base_model().score.modules_to_save["default"].weight.dtype == torch.float32
    tr = RewardTrainer(rm_config(tmp_path, dtype="bfloat16", max_steps=2, eval_steps=0), model, tok, toy_pairs(16, 0))
    history = tr.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_two_processes_equal_one(tmp_path):
    """The recipe under torchrun: 2 processes x 4 pairs give the same run as 1 process x 8 pairs: DDP averages the
    gradients of equal halves (same gradient norms, learning rates and losses at every step; Adam amplifies float
    noise in the weights to ~1e-5 while a step moves them ~1e-2), and evaluation sums the processes' counts."""
    model_dir = save_tiny(tmp_path / "lm")
    toy_pairs(48, 0, chat=True).to_json(str(tmp_path / "pairs.jsonl"))
    finals, metrics = {}, {}
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(27500 + os.getpid() % 1000 + n), os.path.join(ROOT, "recipes", "reward_model.py"),
               "--model", model_dir, "--dataset", str(tmp_path / "pairs.jsonl"), "--output_dir", str(out),
               "--per_device_batch_size", str(8 // n), "--micro_batch_size", "3", "--max_steps", "4",
               "--eval_fraction", "0.25", "--eval_steps", "2", "--learning_rate", "1e-2", "--dtype", "float32",
               "--report_to", "none"]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        finals[n] = load_file(out / "final" / "model.safetensors")
        assert json.load(open(out / "eval.json"))["eval/pairs"] == 12
        metrics[n] = [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in open(out / "metrics.jsonl")]
    assert [m["step"] for m in metrics[1]] == [m["step"] for m in metrics[2]] == [0, 1, 2, 3, 4]
    for one, two in zip(metrics[1], metrics[2]):
        assert one == pytest.approx(two, rel=1e-4, abs=1e-6)
    base = load_file(os.path.join(model_dir, "model.safetensors"))
    assert max((finals[1][k] - base[k]).abs().max().item() for k in base if k in finals[1]) > 1e-2  # it trained
    assert finals[1].keys() == finals[2].keys()
    for k in finals[1]:
        torch.testing.assert_close(finals[1][k], finals[2][k], atol=1e-4, rtol=1e-4)
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(tmp_path / "run2" / "checkpoint-4"))
    plot = subprocess.run([sys.executable, "-m", "llmrl.plot", str(tmp_path / "run2"), "--keys", "loss",
                           "eval/accuracy"], capture_output=True, text=True, cwd=ROOT)
    assert plot.returncode == 0, plot.stderr


# ---------------------------------------------------------------------------------------------- as a reward
def test_reward_model_is_a_reward_source_of_the_grpo_trainer(tmp_path):
    """A RewardModelScorer around a model object, passed in reward_funcs: one public step() rewards each completion
    with the reward model's own score of the conversation."""
    rm, rtok = tiny_reward_model(seed=3)
    tr = tiny_trainer(tmp_path, reward_funcs=[RewardModelScorer(rm, rtok, batch_size=5)])
    metrics, r = tr.step()
    G = tr.cfg.num_generations
    want = torch.tensor([own_score(rm, tokenize_conversation(rtok, r.info["prompts"][i // G], text))
                         for i, text in enumerate(r.info["texts"])])
    assert want.std() > 0  # the scores differ between completions, so the check below has teeth
    torch.testing.assert_close(r.info["per_func"]["reward_model"], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.rewards, want, atol=1e-5, rtol=1e-5)
    assert metrics["rewards/reward_model"] == pytest.approx(want.mean().item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------- preference data
def test_generated_pairs_are_ordered_by_the_checker(tmp_path):
    """Completions of the tiny policy labelled by a fake checker (accepted = has a digit AND is short): every chosen
    is accepted, every rejected is not, both were sampled for that prompt, and the rows train a reward model."""
    policy, tok = tiny_model()
    rows = [dict(r) for r in tiny_dataset(6)]

    def has_digit(prompts, completions, **kw):
        return [float(any(ch.isdigit() for ch in c)) for c in completions]

    def short(prompts, completions, **kw):
        return [float(len(c) <= 8) for c in completions]

    seen = []
    funcs = {"digit": has_digit, "short": short,
             "record": lambda prompts, completions, model_prompts, **kw:
             seen.extend(zip(map(str, model_prompts), completions)) or [1.0] * len(completions)}
    pairs, stats = generate_preference_pairs(policy, tok, rows, funcs, num_generations=6, pairs_per_prompt=3,
                                             max_new_tokens=10, system_prompt="sys", batch_size=4, seed=0)
    assert stats["pairs"] == len(pairs) > 0 and stats["completions"] == 36
    for p in pairs:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert has_digit(None, [chosen]) == short(None, [chosen]) == [1.0]
        assert has_digit(None, [rejected]) == [0.0] or short(None, [rejected]) == [0.0]
        assert (str(p["prompt"]), chosen) in seen and (str(p["prompt"]), rejected) in seen
        assert p["prompt"][0] == {"role": "system", "content": "sys"} and p["prompt"][1]["content"] == p["question"]
    per_prompt = {}
    for p in pairs:
        per_prompt[p["question"]] = per_prompt.get(p["question"], 0) + 1
    assert max(per_prompt.values()) <= 3
    pairs_data = datasets.Dataset.from_list(pairs)
    tokenized, dropped = tokenize_pairs(pairs_data, tok, 10_000)
    assert len(tokenized) == len(pairs) and dropped == 0


def test_label_pairs_takes_distinct_accepted_rejected_combinations():
    got = label_pairs(["a", "b", "a", "c", "d"], [True, False, True, False, True], 10, random.Random(0))
    assert sorted(got) == [("a", "b"), ("a", "c"), ("d", "b"), ("d", "c")]
    assert len(label_pairs(["a", "b", "c"], [True, False, False], 1, random.Random(0))) == 1
    assert label_pairs(["a", "b"], [True, True], 4, random.Random(0)) == []


def test_preference_data_defaults_come_from_the_rl_config():
    from llmrl.llm.config import GRPOConfig

    cfg, grpo = PreferenceDataConfig(), GRPOConfig()
    assert (cfg.dataset, cfg.system_prompt, cfg.prompt_column, cfg.max_new_tokens) == \
        (grpo.dataset, grpo.system_prompt, grpo.prompt_column, grpo.max_new_tokens)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_preference_column_is_named(tmp_path, missing):
    model, tok = tiny_reward_model()
    data = toy_pairs(8, 0).remove_columns(missing)
    with pytest.raises(ValueError, match=f"no column '{missing}'") as e:
        RewardTrainer(rm_config(tmp_path), model, tok, data)
    assert "\n" not in str(e.value)


def test_unreadable_row_is_named():
    _, tok = tiny_reward_model()
    bad = datasets.Dataset.from_list([{"prompt": "text prompt", "chosen": [{"role": "assistant", "content": "x"}],
                                       "rejected": [{"role": "assistant", "content": "y"}]}] * 3)
    with pytest.raises(ValueError, match="preference row 0: a text prompt with a chat-message response"):
        tokenize_pairs(bad, tok, 1000)


def test_model_without_a_score_head(tmp_path):
    from transformers import CodeGenConfig

    CodeGenConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=128, rotary_dim=4).save_pretrained(tmp_path / "cg")
    with pytest.raises(ValueError, match="no sequence-classification .* model type 'codegen'") as e:
        load_reward_model(str(tmp_path / "cg"))
    assert "\n" not in str(e.value)
    policy, tok = tiny_model()
    with pytest.raises(ValueError, match="LlamaForCausalLM has no scalar head `score`"):
        RewardModelScorer(policy, tok)
    with pytest.raises(ValueError, match="pass the reward model's tokenizer"):
        RewardModelScorer(tiny_reward_model()[0])


def test_an_earlier_run_is_refused_before_anything_is_written(tmp_path):
    """By train() (the trainer may be built over a run to resume it, TRL's train(resume_from_checkpoint=True))."""
    model, tok = tiny_reward_model()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "old": true}\n')
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        RewardTrainer(rm_config(tmp_path), model, tok, toy_pairs(8, 0)).train()
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    RewardTrainer(rm_config(tmp_path, overwrite_output_dir=True, max_steps=1, eval_steps=0), model, tok,
                  toy_pairs(8, 0)).train()
    assert '"old"' not in (tmp_path / "metrics.jsonl").read_text()


# ---------------------------------------------------------------------------------------------- the bundled model
@pytest.mark.slow
def test_bundled_model_as_a_reward_model(tmp_path):
    """SmolLM2-135M-Instruct from its GGUF gets a scalar head and LoRA, scores at the last real token, trains on
    rule-labelled arithmetic answers (right vs off by one), and its saved model scores the same when reloaded."""
    from llmrl.llm.config import GRPOConfig
    from llmrl.llm.data import load_prompt_dataset, make_prompt

    cfg = GRPOConfig()
    rows = [load_prompt_dataset(cfg.dataset, "train")[i] for i in range(12)]
    pairs = []
    for row in rows:
        work, gold = row["answer"].split("\n#### ")
        pairs.append({"prompt": make_prompt(row, cfg.prompt_column, cfg.system_prompt),
                      "chosen": f"{work}\nThe answer is {gold}.", "rejected": f"{work}\nThe answer is {int(gold) + 1}."})
    model, tok = load_reward_model("bundled", LoraSettings(r=8, alpha=16), torch.float32)
    assert type(model.get_base_model()).__name__ == "LlamaForSequenceClassification"
    seqs = [tokenize_conversation(tok, p["prompt"], p[k]) for p in pairs[:2] for k in ("chosen", "rejected")]
    ids, mask = pad_sequences(seqs, tok.pad_token_id, "left")
    with torch.no_grad():
        got = sequence_scores(model, ids, mask)
        want = torch.tensor([model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs])
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    tr = RewardTrainer(rm_config(tmp_path, max_steps=2, per_device_batch_size=4, micro_batch_size=2, eval_steps=0,
                                 learning_rate=1e-4), model, tok, datasets.Dataset.from_list(pairs[:8]),
                       datasets.Dataset.from_list(pairs[8:]))
    history = tr.train()
    assert history[-1]["eval/pairs"] == 4 and all(map(torch.isfinite, torch.tensor([h["loss"] for h in history])))
    tr.model.eval()
    with torch.no_grad():
        trained = sequence_scores(tr.model, ids, mask)
    scorer = RewardModelScorer(tr.save_final())
    chosen = scorer([p["prompt"] for p in pairs[:2]], [p["chosen"] for p in pairs[:2]])
    assert chosen == pytest.approx(trained[0::2].tolist(), abs=1e-3)


def test_reward_model_flag_alone_and_weighted_beside_rule_functions(tmp_path):
    """GRPOConfig.reward_model (a saved reward model's directory): alone it is the only reward; listed in
    reward_funcs it is weighted beside rule functions; an unlisted or missing one is refused."""
    from llmrl.llm.config import GRPOConfig
    from tests.llm.tiny import length_reward
    rm, rtok = tiny_reward_model(seed=3)
    rm.save_pretrained(tmp_path / "rm")
    rtok.save_pretrained(tmp_path / "rm")
    scorer = RewardModelScorer(str(tmp_path / "rm"))
    from llmrl.llm.trainer import GRPOTrainer
    from tests.llm.tiny import tiny_dataset, tiny_model
    policy, tok = tiny_model()
    tr = GRPOTrainer(GRPOConfig(output_dir=str(tmp_path / "a"), reward_model=str(tmp_path / "rm"),
                                per_device_batch_size=8, num_generations=4, max_new_tokens=6, report_to="none",
                                dtype="float32"), model=policy, tokenizer=tok, train_dataset=tiny_dataset())
    _, r = tr.step()
    assert list(r.info["per_func"]) == ["reward_model"]
    want = torch.tensor(scorer([None] * len(r.info["texts"]), r.info["texts"],
                               model_prompts=[r.info["prompts"][i // 4] for i in range(len(r.info["texts"]))]))
    torch.testing.assert_close(r.rewards, want, atol=1e-5, rtol=1e-5)
    from llmrl.llm import rewards
    rewards.REWARD_FUNCTIONS["length"] = length_reward
    try:
        policy, tok = tiny_model()
        tr = GRPOTrainer(GRPOConfig(output_dir=str(tmp_path / "b"), reward_model=str(tmp_path / "rm"),
                                    reward_funcs=["length", "reward_model"], reward_weights=[1.0, 0.5],
                                    per_device_batch_size=8, num_generations=4, max_new_tokens=6, report_to="none",
                                    dtype="float32"), model=policy, tokenizer=tok, train_dataset=tiny_dataset())
        _, r = tr.step()
        f = r.info["per_func"]
        torch.testing.assert_close(r.rewards, f["length"] + 0.5 * f["reward_model"])
    finally:
        del rewards.REWARD_FUNCTIONS["length"]
    with pytest.raises(ValueError, match="does not list 'reward_model'"):
        GRPOConfig(reward_model=str(tmp_path / "rm"), reward_funcs=["gsm8k"])
    with pytest.raises(ValueError, match="no --reward_model"):
        GRPOConfig(reward_funcs=["gsm8k", "reward_model"])
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2"):
        GRPOConfig(reward_model=str(tmp_path / "rm"), reward_funcs=["gsm8k", "reward_model"], reward_weights=[1.0])


def test_preference_data_refuses_to_replace_earlier_pairs_before_loading_anything(tmp_path):
    from llmrl.llm import preference_data
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    argv = ["--output_dir", str(tmp_path), "--model", str(tmp_path / "no_such_model")]
    with pytest.raises(FileExistsError, match=r"already holds preference pairs \(train\.jsonl\); pass "
                                              r"--overwrite_output_dir"):
        preference_data.main(argv)
    assert (tmp_path / "train.jsonl").read_text().startswith('{"prompt": "p"')
    with pytest.raises(FileNotFoundError, match="does not exist"):  # with the flag it goes on (to the model)
        preference_data.main(argv + ["--overwrite_output_dir"])


def test_preference_data_without_a_training_pair_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    from llmrl.llm import preference_data, rewards
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "never", lambda prompts, completions, **kw: [0.0] * len(completions))
    data = tmp_path / "data"
    data.mkdir()
    tiny_dataset(8).to_json(data / "train.jsonl")
    tiny_dataset(8).to_json(data / "test.jsonl")
    out = tmp_path / "pairs"
    with pytest.raises(ValueError, match=r"no train pair \(none of the 2 questions had both an accepted and a "
                                         r"rejected completion among its 2\); nothing written; raise --num_prompts, "
                                         r"--num_generations or --max_new_tokens, or use looser --reward_funcs"):
        preference_data.main(["--model", save_tiny(tmp_path / "model"), "--dataset", str(data), "--output_dir",
                              str(out), "--reward_funcs", "never", "--num_prompts", "2", "--num_test_prompts", "2",
                              "--num_generations", "2", "--max_new_tokens", "2", "--system_prompt", "",
                              "--dtype", "float32", "--torch_threads", "1"])
    assert not out.exists()


def test_preference_data_from_one_file_holds_out_other_questions(tmp_path, monkeypatch):
    """A single file is one split: the held-out questions are drawn after the training ones (disjoint), and asking
    for more than it holds is refused, with a missing test split, before the model loads."""
    from llmrl.llm import preference_data
    tiny_dataset(10).to_json(tmp_path / "q.jsonl")
    seen = {}

    def fake_pairs(model, tok, rows, *args, **kw):
        seen[len(seen)] = [r["question"] for r in rows]
        return [{"prompt": r["question"], "chosen": "a", "rejected": "b"} for r in rows], \
            {"pairs": len(rows), "completions": 2 * len(rows), "prompts_with_pairs": len(rows), "accepted_frac": 0.5}
    monkeypatch.setattr(preference_data, "generate_preference_pairs", fake_pairs)
    argv = ["--model", save_tiny(tmp_path / "model"), "--dataset", str(tmp_path / "q.jsonl"), "--num_generations", "2",
            "--dtype", "float32", "--torch_threads", "1"]
    preference_data.main(argv + ["--output_dir", str(tmp_path / "p"), "--num_prompts", "6", "--num_test_prompts", "4"])
    assert len(seen[0]) == 6 and len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
    monkeypatch.setattr(preference_data, "load_policy", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ValueError, match=r"num_prompts \+ num_test_prompts = 11 but .*q\.jsonl \(train\) has 10 "
                                         r"questions for both splits"):
        preference_data.main(argv + ["--output_dir", str(tmp_path / "p2"), "--num_prompts", "6",
                                     "--num_test_prompts", "5"])
    data = tmp_path / "data"
    data.mkdir()
    tiny_dataset(8).to_json(data / "train.jsonl")
    with pytest.raises(FileNotFoundError, match=r"^dataset: .*has no test\.jsonl.*pass --test_split one of them"):
        preference_data.main(argv[:2] + ["--dataset", str(data), "--output_dir", str(tmp_path / "p3")])
    tiny_dataset(3).to_json(data / "test.jsonl")
    with pytest.raises(ValueError, match=r"^num_test_prompts = 4 but .*data \(test\) has 3 questions; lower "
                                         r"--num_test_prompts$"):  # refused, not cut down to 3
        preference_data.main(argv[:2] + ["--dataset", str(data), "--output_dir", str(tmp_path / "p3"),
                                         "--num_prompts", "8", "--num_test_prompts", "4"])


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "p", "chosen": "a"}\n', "no column 'rejected'"),
    ("", r"pairs\.jsonl is empty"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n', "line 2"),
])
def test_reward_model_reports_a_bad_dataset_before_loading_the_model(tmp_path, text, message):
    from llmrl.scripts import reward_model
    (tmp_path / "pairs.jsonl").write_text(text)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run, kept until the data reads
    with pytest.raises(ValueError, match=message):  # the model does not exist: loading it would fail first
        reward_model.main(["--model", str(tmp_path / "no_such_model"), "--dataset", str(tmp_path / "pairs.jsonl"),
                           "--output_dir", str(tmp_path / "run"), "--overwrite_output_dir", "--report_to", "none",
                           "--torch_threads", "1"])
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_rm_resume_from_the_command_line_keeps_the_runs_settings(tmp_path, capsys):
    from llmrl.scripts.reward_model import main
    from tests.llm.tiny import save_tiny
    model_dir = save_tiny(tmp_path / "model")
    toy_pairs(12, 0).to_json(str(tmp_path / "pairs.jsonl"))
    run = tmp_path / "rm"
    main(["--model", model_dir, "--dataset", str(tmp_path / "pairs.jsonl"), "--output_dir", str(run), "--dtype",
          "float32", "--per_device_batch_size", "4", "--micro_batch_size", "2", "--max_steps", "1", "--save_steps",
          "1", "--learning_rate", "3e-3", "--report_to", "none", "--eval_fraction", "0"])
    capsys.readouterr()
    main(["--resume", "latest", "--output_dir", str(run), "--max_steps", "2"])
    assert f"come from {run}/checkpoint-1/config.json: model {model_dir!r}" in capsys.readouterr().out
    saved = json.load(open(run / "config.json"))
    assert (saved["model"], saved["learning_rate"], saved["max_steps"]) == (model_dir, 3e-3, 2)
    # resume is checked as GRPO's is, before anything loads or is written: a fixed setting, an older checkpoint
    before = sorted(os.listdir(run)), (run / "metrics.jsonl").read_text()
    for flags, message in ((["--seed", "7"], r"^resume: seed is 7 but .*checkpoint-2 was written with 0; it cannot "
                                             r"change"),
                           (["--lora_r", "8"], r"^resume: lora_r is 8 but"),
                           (["--resume", str(run / "checkpoint-1")], r"checkpoint-1 is older than .*checkpoint-2")):
        with pytest.raises(ValueError, match=message):
            main(["--resume", "latest", "--output_dir", str(run), "--max_steps", "3", *flags])
        assert (sorted(os.listdir(run)), (run / "metrics.jsonl").read_text()) == before


def test_reward_config_takes_trls_names():
    """TRL RewardConfig habits: each TRL name sets the llmrl setting it means (then is cleared), on the command
    line too; one that contradicts the llmrl setting given with it is refused by name."""
    from llmrl.utils import parse_config
    cfg = RewardConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, bf16=False,
                       lr_scheduler_type="cosine", per_device_eval_batch_size=3, resume_from_checkpoint="true")
    assert (cfg.per_device_batch_size, cfg.micro_batch_size, cfg.dtype, cfg.lr_scheduler, cfg.eval_batch_size,
            cfg.resume) == (8, 4, "float32", "cosine", 3, "latest")
    assert cfg.per_device_train_batch_size is cfg.gradient_accumulation_steps is cfg.bf16 is None
    flags = parse_config(RewardConfig, ["--per_device_train_batch_size", "2", "--bf16", "true"])
    assert (flags.per_device_batch_size, flags.micro_batch_size, flags.dtype) == (2, 2, "bfloat16")
    with pytest.raises(ValueError, match=r"^RewardConfig: per_device_train_batch_size=4 contradicts "
                                         r"micro_batch_size=2; give one of them$"):
        RewardConfig(per_device_train_batch_size=4, micro_batch_size=2)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size=4 \(which sets per_device_batch_size=8\) "
                                         r"contradicts per_device_batch_size=4"):
        RewardConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, per_device_batch_size=4)
    with pytest.raises(ValueError, match=r"^RewardConfig: gradient_accumulation_steps needs "
                                         r"per_device_train_batch_size"):
        RewardConfig(gradient_accumulation_steps=2)


def test_rm_command_refuses_an_earlier_run_before_loading(tmp_path):
    from llmrl.scripts import reward_model
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="already holds a run"):  # not the missing model's error
        reward_model.main(["--model", str(tmp_path / "no_such_model"), "--dataset", str(tmp_path / "none.jsonl"),
                           "--output_dir", str(tmp_path)])
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
