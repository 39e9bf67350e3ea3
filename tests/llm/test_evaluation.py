"""Evaluation: the pass@k estimator against its formula and against enumeration; pass@k and accuracy of a policy
from the completions the reward saw; evaluation during training (logged at its steps, leaving training
bit-identical); best-checkpoint tracking and its survival of rotation and resume; the recipe's evaluation files
(labels that say what was evaluated, merged, never lost; eval-only beside the adapter or model), its checks before
any model load, and its progress bar."""
import itertools
import json
import math
import os

import pytest
import torch

from llmrl.llm import rewards
from llmrl.llm.evaluation import eval_label, pass_at_k
from llmrl.llm.trainer import TIMING_METRICS
from tests.llm.tiny import length_reward, save_tiny, tiny_dataset, tiny_trainer


# ----------------------------------------------------------------------------- the estimator
def test_pass_at_k_hand_values_and_the_binomial_formula():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 1, 1) == pytest.approx(1 / 4)       # pass@1 = c / n
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(6, 4, 3) == 1.0                          # n - c < k: every 3 of 6 hold a correct one
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # large n, where C(n, k) is far beyond float range: exact integer arithmetic agrees with the stable product
    exact = 1 - math.comb(1900, 100) / math.comb(2000, 100)
    assert pass_at_k(2000, 100, 100) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_equals_enumeration_of_k_subsets():
    """The fraction of k-subsets of the n outcomes that hold a correct one, over every outcome pattern."""
    for n in range(1, 7):
        for outcomes in itertools.product([0, 1], repeat=n):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, sum(outcomes), k) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_refuses_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k: need"):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- evaluating a policy
def _recording_reward(monkeypatch, name="parity"):
    """A 0/1 reward (even completion length) that records every batch of completions it scores."""
    seen = []

    def parity(prompts, completions, **kw):
        seen.append((list(prompts), list(completions)))
        return [float(len(c) % 2 == 0) for c in completions]
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, name, parity)
    return seen


def test_accuracy_and_pass_at_k_from_the_completions_scored(tmp_path, monkeypatch):
    seen = _recording_reward(monkeypatch)
    tr = tiny_trainer(tmp_path, eval_reward="parity", eval_pass_k=[1, 2, 4], eval_num_samples=4, eval_examples=5,
                      eval_batch_size=8, temperature=1.5)
    res = tr.evaluate(tiny_dataset(7))
    greedy, sampled = seen[0][1], [c for _, cs in seen[1:] for c in cs]
    assert len(seen) == 1 + 3 and len(greedy) == 5 and len(sampled) == 5 * 4  # 8 sequences = 2 prompts x 4
    assert res["n"] == 5 and res["accuracy"] == pytest.approx(sum(len(c) % 2 == 0 for c in greedy) / 5)
    counts = [sum(len(c) % 2 == 0 for c in sampled[4 * i:4 * i + 4]) for i in range(5)]
    assert 0 < sum(counts) < 20  # the test needs prompts with mixed outcomes
    for k in (1, 2, 4):
        want = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in counts) / 5
        assert res[f"pass@{k}"] == pytest.approx(want)
    assert [s["num_correct"] for s in res["samples"]] == counts
    assert res == tr.evaluate(tiny_dataset(7))  # the sampling generator is seeded afresh at each evaluation


def test_pass_at_k_needs_a_0_1_reward(tmp_path, monkeypatch):
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "half", lambda prompts, completions, **kw: [0.5] * len(completions))
    tr = tiny_trainer(tmp_path, eval_reward="half", eval_pass_k=[1], eval_examples=2)
    with pytest.raises(ValueError, match=r"pass@k counts completions that eval_reward 'half' scores 1 .* gave 0.5"):
        tr.evaluate(tiny_dataset(2))


@pytest.mark.parametrize("kw, words", [
    (dict(eval_steps=5), "set eval_examples > 0"),
    (dict(eval_pass_k=[1, 4], eval_num_samples=2), "eval_num_samples (2) must be >= the largest eval_pass_k (4)"),
    (dict(eval_num_samples=4), "eval_pass_k is not"),
    (dict(eval_reward="nope"), "eval_reward"),
    (dict(eval_steps=5, eval_examples=4, metric_for_best_model="pass@4"), "choose one of accuracy"),
    (dict(metric_for_best_model="accuracy"), "needs eval_steps > 0"),
    (dict(eval_steps=5, eval_examples=4, save_steps=12, metric_for_best_model="accuracy"),
     "save_steps (12) must be a multiple of eval_steps (5)"),
    (dict(hub_model_id="me/x"), "push_to_hub is not"),
])
def test_evaluation_settings_errors_are_one_line(kw, words):
    from llmrl.llm.config import GRPOConfig
    with pytest.raises(ValueError) as e:
        GRPOConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)
    cfg = GRPOConfig(eval_steps=5, eval_examples=4, eval_pass_k=[1, 4], save_steps=10,
                     metric_for_best_model="eval/pass@4")
    assert cfg.eval_num_samples == 4 and cfg.metric_for_best_model == "eval/pass@4" and cfg.greater_is_better


def _without(rows, skip):
    return [{k: v for k, v in r.items() if k not in skip and not k.startswith("eval/")} for r in rows]


def test_evaluation_during_training_is_logged_and_leaves_training_bit_identical(tmp_path, monkeypatch):
    """eval/* at every eval_steps step and the last (whatever logging_steps is), in metrics.jsonl and TensorBoard;
    the weights and training metrics equal those of the same run without evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _recording_reward(monkeypatch)
    runs = {}
    for name, kw in (("plain", {}), ("eval", dict(eval_steps=2, eval_examples=3, eval_pass_k=[1, 2],
                                                  eval_reward="parity", report_to=["tensorboard"]))):
        tr = tiny_trainer(tmp_path / name, max_steps=5, logging_steps=1, **kw)
        tr.eval_dataset = tiny_dataset(5)
        tr.train()
        runs[name] = (tr, [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")])
    (plain, plain_rows), (ev, ev_rows) = runs["plain"], runs["eval"]
    assert all(torch.equal(a, b) for a, b in zip(plain.model.parameters(), ev.model.parameters()))
    assert _without(plain_rows, TIMING_METRICS) == _without(ev_rows, TIMING_METRICS)
    assert [r["step"] for r in ev_rows if "eval/accuracy" in r] == [2, 4, 5]
    assert all({"eval/pass@1", "eval/pass@2"} <= set(r) for r in ev_rows if "eval/accuracy" in r)
    acc = EventAccumulator(str(tmp_path / "eval" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/pass@2")] == [2, 4, 5]
    # with logging_steps=3 the eval steps are still logged (their eval/* metrics only)
    tr = tiny_trainer(tmp_path / "sparse", max_steps=4, logging_steps=3, eval_steps=2, eval_examples=2,
                      eval_reward="parity")
    tr.eval_dataset = tiny_dataset(5)
    tr.train()
    rows = [json.loads(line) for line in open(tmp_path / "sparse" / "metrics.jsonl")]
    assert [(r["step"], "reward" in r, "eval/accuracy" in r) for r in rows] == [(2, False, True), (3, True, False),
                                                                             (4, False, True)]


def _scheduled_reward(monkeypatch, accuracies):
    """An eval reward whose accuracy at the i-th evaluation is accuracies[i] (one greedy batch per evaluation)."""
    schedule = iter(accuracies)

    def scheduled(prompts, completions, **kw):
        ones = round(next(schedule) * len(completions))
        return [1.0] * ones + [0.0] * (len(completions) - ones)
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "scheduled", scheduled)


@pytest.mark.parametrize("greater, best_step", [(True, 2), (False, 1)])
def test_best_checkpoint_is_kept_by_rotation_and_recorded(tmp_path, monkeypatch, greater, best_step):
    _scheduled_reward(monkeypatch, [0.2, 0.8, 0.4, 0.8])  # the tie at step 4 keeps step 2
    tr = tiny_trainer(tmp_path, max_steps=4, save_steps=1, save_total_limit=1, eval_steps=1, eval_examples=5,
                      eval_reward="scheduled", metric_for_best_model="accuracy", greater_is_better=greater)
    tr.eval_dataset = tiny_dataset(5)
    tr.train()
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == \
        sorted({f"checkpoint-{best_step}", "checkpoint-4"})
    best = json.load(open(tmp_path / "best_checkpoint.json"))
    assert best == {"checkpoint": f"checkpoint-{best_step}", "step": best_step, "metric": "eval/accuracy",
                    "value": [0.2, 0.8][best_step - 1], "greater_is_better": greater}


def test_best_checkpoint_survives_resume(tmp_path, monkeypatch):
    _scheduled_reward(monkeypatch, [0.2, 0.8, 0.4, 0.6, 1.0])
    kw = dict(save_steps=1, save_total_limit=1, eval_steps=1, eval_examples=5, eval_reward="scheduled",
              metric_for_best_model="accuracy")
    tr = tiny_trainer(tmp_path, max_steps=3, **kw)
    tr.eval_dataset = tiny_dataset(5)
    tr.train()
    again = tiny_trainer(tmp_path, max_steps=5, resume="latest", **kw)
    again.eval_dataset = tiny_dataset(5)
    os.remove(tmp_path / "best_checkpoint.json")  # the checkpoint carries it: it comes back on resume
    again.train()  # step 4 (0.6) is no better than step 2: both kept; step 5 (1.0) is the new best
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == ["checkpoint-5"]
    assert json.load(open(tmp_path / "best_checkpoint.json"))["checkpoint"] == "checkpoint-5"


def test_best_checkpoint_is_restored_from_the_checkpoint(tmp_path, monkeypatch):
    from llmrl.llm import checkpoint as ckpt
    _scheduled_reward(monkeypatch, [0.2, 0.8, 0.4])
    kw = dict(save_steps=1, save_total_limit=1, eval_steps=1, eval_examples=5, eval_reward="scheduled",
              metric_for_best_model="accuracy")
    tr = tiny_trainer(tmp_path, max_steps=3, **kw)
    tr.eval_dataset = tiny_dataset(5)
    tr.train()
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    os.remove(tmp_path / "best_checkpoint.json")
    fresh = tiny_trainer(tmp_path / "x", max_steps=5, **kw)
    ckpt.load_checkpoint(fresh, str(tmp_path / "checkpoint-3"))
    assert fresh.best["checkpoint"] == "checkpoint-2" and fresh.best["value"] == 0.8


# ----------------------------------------------------------------------------- the recipe
@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    """A saved tiny model and a data directory with train and test splits; the 'length' training reward."""
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "length", length_reward)
    model_dir = save_tiny(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    tiny_dataset(24).to_json(str(data / "train.jsonl"))
    tiny_dataset(6).to_json(str(data / "test.jsonl"))
    flags = ["--model", model_dir, "--dataset", str(data), "--reward_funcs", "length", "--dtype", "float32",
             "--per_device_batch_size", "8", "--num_generations", "4", "--max_new_tokens", "6", "--report_to", "none",
             "--system_prompt", "", "--eval_examples", "3", "--save_steps", "1"]
    return model_dir, flags


def _recipe(*argv):
    from recipes.grpo_gsm8k import main
    return main(list(argv))


def test_training_run_labels_before_and_after_and_keeps_other_labels(tmp_path, tiny_setup, capsys):
    model_dir, flags = tiny_setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"someone else's": {"accuracy": 0.5}}))
    _recipe(*flags, "--output_dir", str(run), "--max_steps", "2", "--eval_pass_k", "2", "--save_merged")
    results = json.load(open(run / "eval.json"))
    assert set(results) == {"someone else's", "before", "after"} and results["someone else's"] == {"accuracy": 0.5}
    assert results["before"]["adapter"] is None and results["before"]["model"] == model_dir
    assert results["after"]["adapter"] == os.path.join(str(run), "final")
    assert results["after"]["dataset"].endswith("data") and results["after"]["split"] == "test"
    assert results["after"]["n"] == 3 and "pass@2" in results["after"]
    assert len(open(run / results["before"]["samples_file"]).readlines()) == 3
    out = capsys.readouterr()
    assert f"[before: model {model_dir} on " in out.out and f"[after: adapter {run}/final on" in out.out
    assert "eval before: 100%" in out.err and "| 6/6 " in out.err  # 3 greedy + 3 sampled prompts, with the total
    # eval-only of that run's final adapter: beside the adapter, under its own label; then of a checkpoint
    # (adapter in checkpoint-2/adapter/) into an explicitly given output_dir holding the run's results
    _recipe(*flags, "--eval_only", "--adapter", str(run / "final"))
    label = f"adapter {run}/final on {tmp_path}/data/test n=3 (max_new_tokens 6, system_prompt '', num_samples 2)"
    assert list(json.load(open(run / "final" / "eval.json"))) == [label]
    _recipe(*flags, "--eval_only", "--adapter", str(run / "checkpoint-2"), "--output_dir", str(run))
    merged = json.load(open(run / "eval.json"))
    checkpoint_label = f"adapter {run}/checkpoint-2 on {tmp_path}/data/test n=3 (max_new_tokens 6, " \
        "system_prompt '', num_samples 2)"  # pass@2 too: the run's evaluation settings
    assert set(merged) == {"someone else's", "before", "after", checkpoint_label}
    assert merged["before"] == results["before"] and merged["after"] == results["after"]
    # the trained adapter's accuracy equals the merged model's and the checkpoint's (the same policy at step 2)
    _recipe(*flags, "--eval_only", "--model", str(run / "final-merged"))
    merged_model = json.load(open(run / "final-merged" / "eval.json"))
    (entry,) = merged_model.values()
    assert entry["model"] == str(run / "final-merged") and entry["adapter"] is None
    assert entry["accuracy"] == merged[checkpoint_label]["accuracy"]


def test_eval_dataset_is_checked_before_any_model_load(tmp_path, tiny_setup, monkeypatch):
    import llmrl.llm.model as M
    import llmrl.llm.trainer as T
    model_dir, flags = tiny_setup

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(T, "load_policy", no_load)
    monkeypatch.setattr(M, "load_policy", no_load)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n")
    for extra in ([], ["--eval_only"]):
        with pytest.raises(ValueError, match=r"^eval dataset .*bad\.jsonl.*: dataset has no column 'answer'"):
            _recipe(*flags, "--eval_dataset", str(bad), "--output_dir", str(tmp_path / "r"), *extra)
    assert not (tmp_path / "r").exists()


def test_a_refused_run_evaluates_nothing_and_writes_nothing(tmp_path, tiny_setup, monkeypatch):
    from llmrl.llm.trainer import GRPOTrainer
    model_dir, flags = tiny_setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    monkeypatch.setattr(GRPOTrainer, "evaluate", lambda *a, **k: pytest.fail("evaluated before refusing"))
    with pytest.raises(FileExistsError, match="already holds a run"):
        _recipe(*flags, "--output_dir", str(run), "--max_steps", "1")
    assert sorted(os.listdir(run)) == ["metrics.jsonl"]


def test_eval_only_refuses_a_directory_without_an_adapter_and_push_to_hub(tmp_path, tiny_setup):
    model_dir, flags = tiny_setup
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        _recipe(*flags, "--eval_only", "--adapter", model_dir)
    with pytest.raises(ValueError, match="--eval_only uploads nothing"):
        _recipe(*flags, "--eval_only", "--push_to_hub")
    assert not os.path.exists(os.path.join(model_dir, "eval.json"))


def test_eval_only_uses_torch_threads(tmp_path, tiny_setup, monkeypatch):
    import llmrl.scripts.grpo as script
    model_dir, flags = tiny_setup
    seen, threads = [], torch.get_num_threads()
    monkeypatch.setattr(script, "evaluate_policy", lambda *a, **k: seen.append(torch.get_num_threads()) or pytest.fail(
        "stop here"))
    try:
        with pytest.raises(pytest.fail.Exception, match="stop here"):
            _recipe(*flags, "--eval_only", "--torch_threads", "1", "--eval_examples", "2")
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]


def test_an_unreadable_eval_json_is_never_replaced(tmp_path):
    from llmrl.llm.evaluation import save_eval_results
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval.json is not valid JSON .*move it away"):
        save_eval_results(str(tmp_path), "after", {"accuracy": 1.0, "n": 1}, {})
    assert (tmp_path / "eval.json").read_text() == "{not json"


def test_two_processes_split_the_questions_and_sum_the_counts(tmp_path, tiny_setup):
    """Eval-only under torchrun with 2 processes: the same greedy accuracy as one process, every question's sample
    in the file (gathered from both), pass@k summed over both processes' questions."""
    import subprocess
    import sys
    model_dir, flags = tiny_setup
    one = _recipe(*flags, "--eval_only", "--eval_examples", "5", "--output_dir", str(tmp_path / "one"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(27500 + os.getpid() % 1000), os.path.join(root, "tests", "llm", "run_tiny.py"), model_dir,
           str(tmp_path / "data"), "--eval_only", "--eval_examples", "5", "--output_dir", str(tmp_path / "two"),
           "--eval_pass_k", "1", "--eval_reward", "length01", "--max_new_tokens", "6"]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ((label, entry),) = json.load(open(tmp_path / "two" / "eval.json")).items()
    samples = [json.loads(line) for line in open(tmp_path / "two" / entry["samples_file"])]
    assert entry["n"] == 5 and len(samples) == 5 and len({s["prompt"][-1]["content"] for s in samples}) == 5
    # pass@1 is the mean over questions of (correct samples / 1): the summed counts, from the per-question file
    assert entry["pass@1"] == pytest.approx(sum(s["num_correct"] for s in samples) / 5)
    assert entry["accuracy"] == pytest.approx(sum(s["score"] for s in samples) / 5)
    (label_one,) = one
    file_one = json.load(open(tmp_path / "one" / "eval.json"))[label_one]["samples_file"]
    greedy_one = [json.loads(line)["completion"] for line in open(tmp_path / "one" / file_one)]
    assert sorted(s["completion"] for s in samples) == sorted(greedy_one)  # the same greedy completions


def test_resume_and_adapter_take_the_run_settings_the_command_line_leaves_out(tmp_path, tiny_setup, capsys):
    """`--resume latest --output_dir R` continues R with R's settings (only the flags given change); `eval` and
    `grpo --adapter R/final` take the base model (and eval the prompts and decoding) of the run that trained it."""
    model_dir, flags = tiny_setup
    run = tmp_path / "run"
    i = flags.index("--max_new_tokens")
    flags = flags[:i] + flags[i + 2:] + ["--max_completion_length", "5"]  # a TRL name in the saved settings
    _recipe(*flags, "--learning_rate", "3e-3", "--beta", "0.05", "--output_dir", str(run), "--max_steps", "1",
            "--no_eval_before")
    capsys.readouterr()
    _recipe("--resume", "latest", "--output_dir", str(run), "--max_steps", "2", "--eval_examples", "0")
    out = capsys.readouterr().out
    assert f"come from {run}/checkpoint-1/config.json: model {model_dir!r}" in out
    saved = json.load(open(run / "config.json"))
    assert (saved["model"], saved["learning_rate"], saved["beta"], saved["max_new_tokens"], saved["max_steps"]) == \
        (model_dir, 3e-3, 0.05, 5, 2)
    assert [json.loads(x)["step"] for x in open(run / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ValueError, match=r"resume: num_generations is 2 but .* was written with 4; .*drop "
                                         r"--num_generations"):
        _recipe("--resume", "latest", "--output_dir", str(run), "--max_steps", "3", "--num_generations", "2")
    # eval of the adapter without --model: the run's model (tiny, not the bundled one), data and prompts
    res = _recipe("--eval_only", "--adapter", str(run / "final"), "--eval_examples", "2")
    assert [v["n"] for v in res.values()] == [2]
    assert f"come from {run}/config.json: model {model_dir!r}" in capsys.readouterr().out
    assert json.load(open(run / "final" / "eval.json"))[next(iter(res))]["model"] == model_dir
    with pytest.raises(ValueError, match="eval_examples 0 skips evaluation"):
        _recipe("--eval_only", "--adapter", str(run / "final"), "--eval_examples", "0")
    # training on rewrites final/: the evaluation of the earlier adapter is kept, no longer under final/eval.json
    before = json.load(open(run / "final" / "eval.json"))
    _recipe("--resume", "latest", "--output_dir", str(run), "--max_steps", "3", "--eval_examples", "0")
    assert not (run / "final" / "eval.json").exists()
    assert json.load(open(run / "final" / "eval.before-step-3.json")) == before


def test_resume_from_an_older_checkpoint_than_the_run_holds_is_refused(tmp_path, tiny_setup):
    model_dir, flags = tiny_setup
    run = tmp_path / "run"
    _recipe(*flags, "--output_dir", str(run), "--max_steps", "2", "--save_total_limit", "3", "--eval_examples", "0")
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"checkpoint-1 is older than .*checkpoint-2 in .*; move the newer"):
        _recipe("--resume", str(run / "checkpoint-1"), "--output_dir", str(run), "--max_steps", "3")
    assert (run / "metrics.jsonl").read_text() == metrics


def test_evaluations_with_other_settings_are_kept_side_by_side(tmp_path, tiny_setup):
    model_dir, flags = tiny_setup
    out = tmp_path / "ev"
    base = [*flags, "--eval_only", "--output_dir", str(out), "--eval_examples", "2"]
    first = _recipe(*base)
    second = _recipe(*base, "--eval_reward", "length")
    third = _recipe(*base, "--max_new_tokens", "4")
    labels = [next(iter(r)) for r in (first, second, third)]
    assert len(set(labels)) == 3 and "reward 'length'" in labels[1] and "max_new_tokens 4" in labels[2]
    assert set(json.load(open(out / "eval.json"))) == set(labels)
    assert eval_label(dict(model="m", adapter=None, dataset="d", split="test", n=5, reward="gsm8k",
                           max_new_tokens=128, system_prompt=None)) == "model m on d/test n=5"
