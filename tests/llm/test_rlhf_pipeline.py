"""The offline RLHF pipeline (recipes/rlhf_pipeline.py) end to end on the tiny model, every stage with the smallest
budgets: preference pairs labelled by a rule, a reward model trained on them, PPO with a critic started from it,
GRPO and REINFORCE++ on the learned reward alone, GRPO on the rule, then the curves and the numbers."""
import json
import os

import pytest

from tests.llm.tiny import save_tiny, tiny_dataset


def even_length(prompts, completions, **kw):
    """A 0/1 rule the tiny model satisfies about half the time (it never solves a sum)."""
    return [float(len(c) % 2 == 0) for c in completions]


@pytest.fixture
def rule(monkeypatch):
    from llmrl.llm import rewards
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "even_length", even_length)


def test_pipeline_runs_every_stage_on_the_tiny_model(tmp_path, rule):
    from recipes.rlhf_pipeline import main
    model = save_tiny(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    tiny_dataset(24).to_json(data / "train.jsonl")
    tiny_dataset(8).to_json(data / "test.jsonl")
    out = tmp_path / "rlhf"
    result = main(["--output_dir", str(out), "--model", model, "--dataset", str(data), "--system_prompt", "", "--dtype",
                   "float32", "--max_new_tokens", "6", "--rule_reward_funcs", "even_length", "--eval_reward",
                   "even_length", "--pref_prompts", "6", "--pref_test_prompts", "4", "--pref_generations", "4",
                   "--rm_max_steps", "2", "--rm_batch_size", "4", "--rl_steps", "2", "--prompts_per_step", "2",
                   "--num_generations", "2", "--eval_examples", "4", "--eval_steps", "1", "--learning_rate", "1e-2",
                   "--png", str(tmp_path / "img" / "curves.png")])
    pairs = [json.loads(x) for x in open(out / "preferences" / "train.jsonl")]
    assert pairs and all(len(p["chosen"][0]["content"]) % 2 == 0 != len(p["rejected"][0]["content"]) % 2
                         for p in pairs)  # chosen by the rule
    assert os.path.isfile(out / "reward_model" / "final" / "config.json")
    assert 0 < result["reward_model"]["eval/pairs"]
    assert set(result["runs"]) == {"ppo", "grpo", "reinforce_plus_plus", "grpo_rule"}
    for name, run in result["runs"].items():
        assert [s for s, _ in run["accuracy_curve"]] == [1, 2], name
        assert len(run["rule_reward"]) == 2 and None not in run["rule_reward"], name
        config = json.load(open(out / "rl" / name / "config.json"))
        assert config["max_steps"] * config["per_device_batch_size"] == 8  # equal sample budgets
        if name == "grpo_rule":
            assert config["reward_funcs"] == ["even_length"] and config["reward_model"] is None
        else:  # the learned reward alone: the rule is logged at weight 0
            assert config["reward_funcs"] == ["reward_model", "even_length"] and config["reward_weights"] == [1, 0]
    ppo = json.load(open(out / "rl" / "ppo" / "config.json"))
    assert ppo["advantage"] == "gae" and ppo["critic_model"] == str(out / "reward_model" / "final")
    assert "critic/value_loss" in json.loads(open(out / "rl" / "ppo" / "metrics.jsonl").readline())
    assert "base_accuracy" in result
    assert open(tmp_path / "img" / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(out / "result.json"))["runs"].keys() == result["runs"].keys()


def test_pipeline_without_a_preference_pair_stops_with_one_line(tmp_path, monkeypatch):
    from llmrl.llm import rewards
    from recipes.rlhf_pipeline import main
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "never", lambda prompts, completions, **kw: [0.0] * len(completions))
    data = tmp_path / "data"
    data.mkdir()
    tiny_dataset(8).to_json(data / "train.jsonl")
    with pytest.raises(ValueError, match="no train pair .* raise --pref_prompts or --pref_generations"):
        main(["--output_dir", str(tmp_path / "rlhf"), "--model", save_tiny(tmp_path / "model"), "--dataset", str(data),
              "--system_prompt", "", "--dtype", "float32", "--max_new_tokens", "4", "--rule_reward_funcs", "never",
              "--pref_prompts", "2", "--pref_test_prompts", "0", "--pref_generations", "2", "--stages", "data"])
