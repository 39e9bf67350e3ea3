"""TRL habits carry over (issue 19.8): TRL's config names, its trainer keywords, strings where TRL takes strings,
and trainer.save_model."""
import json
import os

import pytest
import torch

from llmrl.llm.config import GRPOConfig
from tests.llm.tiny import length_reward, save_tiny, tiny_dataset, tiny_model


def test_trl_config_names_set_the_llmrl_settings():
    c = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=3, num_generations=4,
                   max_completion_length=64, bf16=True, epsilon=0.1, epsilon_high=0.28,
                   importance_sampling_level="sequence", lr_scheduler_type="cosine", per_device_eval_batch_size=7,
                   resume_from_checkpoint="true", report_to="none", lora_target_modules="all-linear")
    assert (c.micro_batch_size, c.per_device_batch_size) == (4, 12)  # TRL: micro-batch x accumulation steps
    assert (c.max_new_tokens, c.dtype, c.clip_low, c.clip_high) == (64, "bfloat16", 0.1, 0.28)
    assert (c.ratio_level, c.lr_scheduler, c.eval_batch_size, c.resume) == ("sequence", "cosine", 7, "latest")
    assert c.report_to == ["none"] and c.lora_target_modules == ["all-linear"]
    # each setting is recorded once, under llmrl's name
    assert c.per_device_train_batch_size is None and c.max_completion_length is None and c.bf16 is None


@pytest.mark.parametrize("kw, words", [
    (dict(max_completion_length=64, max_new_tokens=32), "max_completion_length=64 contradicts max_new_tokens=32"),
    (dict(bf16=True, dtype="float32"), "contradicts dtype"),
    (dict(gradient_accumulation_steps=2), "needs per_device_train_batch_size"),
    (dict(use_vllm=True), "vLLM is not supported"),
    (dict(num_train_epochs=1, max_steps=5), "num_train_epochs and max_steps"),
])
def test_contradicting_or_unsupported_trl_settings_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        GRPOConfig(**kw)


def test_trainer_takes_trl_keywords_and_saves_like_trl(tmp_path):
    """GRPOTrainer(model=<path>, reward_funcs=<one callable>, args=config, train_dataset=..., peft_config=...)."""
    from peft import LoraConfig, PeftModel

    from llmrl.llm.trainer import GRPOTrainer
    model_dir = save_tiny(tmp_path / "model")
    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                      num_generations=4, max_completion_length=6, num_train_epochs=1, report_to="none",
                      dtype="float32", save_steps=0)
    tr = GRPOTrainer(model=model_dir, reward_funcs=length_reward, args=args, train_dataset=tiny_dataset(24),
                     peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    assert tr.cfg.max_steps == 12  # 24 prompts / 2 prompts per step, one epoch
    assert tr.model.peft_config["default"].r == 2 and tr.tok.padding_side == "left"
    tr.cfg.max_steps = 1
    tr.train()
    out = tr.save_model(str(tmp_path / "saved"))
    base, _ = tiny_model(0)
    loaded = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tr.model(ids).logits)
    assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))


def test_trl_keyword_contradictions_are_refused(tmp_path):
    from peft import LoraConfig

    from llmrl.llm.trainer import GRPOTrainer
    cfg = GRPOConfig(output_dir=str(tmp_path), report_to="none", lora_r=8)
    with pytest.raises(ValueError, match="pass the config once"):
        GRPOTrainer(cfg, args=cfg)
    with pytest.raises(ValueError, match="peft_config and the config's lora_r"):
        GRPOTrainer(model="x", args=cfg, peft_config=LoraConfig(r=2))
    model, tok = tiny_model()
    with pytest.raises(ValueError, match="pass the tokenizer once"):
        GRPOTrainer(GRPOConfig(output_dir=str(tmp_path)), model=model, tokenizer=tok, processing_class=tok)


def test_a_model_object_is_recorded_as_what_it_is(tmp_path):
    from tests.llm.tiny import tiny_trainer
    tr = tiny_trainer(tmp_path, max_steps=1)
    assert tr.cfg.model == "a LlamaForCausalLM object"  # not the bundled model the config's default names
    tr.train()
    assert json.load(open(tmp_path / "config.json"))["model"] == "a LlamaForCausalLM object"


def test_lora_settings_with_a_plain_model_object_are_refused(tmp_path):
    from tests.llm.tiny import tiny_trainer
    with pytest.raises(ValueError, match=r"lora_r=8 applies to a model llmrl loads .* pass peft_config="):
        tiny_trainer(tmp_path, lora=False, lora_r=8)


def test_a_trl_flag_wins_over_a_runs_setting():
    """Resuming, or evaluating a run's adapter, takes the run's settings as defaults; a TRL-named flag given now
    (--max_completion_length) sets its llmrl setting (max_new_tokens) over the run's value instead of being refused
    as a contradiction of it. Every TRL-named setting is in TRL_TARGETS."""
    import dataclasses

    from llmrl.llm.reward_trainer import RewardConfig
    from llmrl.utils import parse_config
    run = {"max_new_tokens": 8, "dtype": "float32", "micro_batch_size": 4, "per_device_batch_size": 8, "seed": 3}
    cfg = parse_config(GRPOConfig, ["--max_completion_length", "16", "--bf16"], defaults=run)
    assert (cfg.max_new_tokens, cfg.dtype, cfg.micro_batch_size, cfg.seed) == (16, "bfloat16", 4, 3)
    cfg = parse_config(RewardConfig, ["--per_device_train_batch_size", "2"],
                       defaults={k: v for k, v in run.items() if k != "max_new_tokens"})
    assert (cfg.per_device_batch_size, cfg.micro_batch_size, cfg.dtype) == (2, 2, "float32")
    cfg = parse_config(GRPOConfig, ["--max_steps", "6"], defaults={**run, "num_train_epochs": 0.25})
    assert (cfg.max_steps, cfg.num_train_epochs) == (6, None)  # the llmrl flag wins over the run's TRL name too
    # the first, unchecked look at the flags (which finds the run a --resume continues) refuses nothing: the run's
    # num_generations (4) is not known yet, and 4 prompts x G would be refused against the class default (8)
    raw = parse_config(GRPOConfig, ["--per_device_train_batch_size", "4", "--resume", "latest"], checked=False)
    assert (raw.per_device_train_batch_size, raw.resume, raw.per_device_batch_size) == (4, "latest", 16)
    with pytest.raises(ValueError, match="must be divisible by num_generations"):
        parse_config(GRPOConfig, ["--per_device_train_batch_size", "4"])
    cfg = parse_config(GRPOConfig, ["--per_device_train_batch_size", "4"], defaults={"num_generations": 4})
    assert (cfg.per_device_batch_size, cfg.num_generations) == (4, 4)
    for cls in (GRPOConfig, RewardConfig):
        trl_named = {f.name for f in dataclasses.fields(cls) if f.metadata.get("help", "").startswith("TRL:")}
        assert trl_named - {"use_vllm"} == set(cls.TRL_TARGETS), cls.__name__


@pytest.mark.parametrize("settings, message", [
    (dict(lr_scheduler_type="nonsense"), r"lr_scheduler \(TRL: lr_scheduler_type\) must be one of linear, .*got "
                                         r"'nonsense'"),
    (dict(lr_scheduler="reduce_lr_on_plateau"), r"lr_scheduler .*must be one of"),
    (dict(per_device_train_batch_size=2, gradient_accumulation_steps=0), r"gradient_accumulation_steps must be >= 1"),
])
def test_trainer_settings_refused_at_once_in_both_configs(settings, message):
    """Before any model loads (a bad scheduler name used to fail in transformers.get_scheduler, after loading)."""
    from llmrl.llm.reward_trainer import RewardConfig
    for cls in (GRPOConfig, RewardConfig):
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: {message}"):
            cls(**settings)
