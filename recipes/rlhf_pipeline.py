"""The offline RLHF pipeline in one command (issue 14): the project makes its own preference data, learns a reward
model from it, and trains the policy on that learned reward, measured throughout by the rule checker it never saw.

  1. data:          sample completions of the policy on the arithmetic task, label them with the rule checker
                    (correct and well-formatted > not), pair them (llmrl.llm.preference_data)     -> OUT/preferences
  2. reward_model:  Bradley-Terry on the pairs, pairwise accuracy on held-out pairs
                    (recipes/reward_model.py)                                                      -> OUT/reward_model
  3. rl:            at equal sample budgets (steps x prompts x completions), recipes/grpo_gsm8k.py runs
                      ppo                  advantage=gae, the critic started from the reward model  \\  the learned
                      grpo                 advantage=grpo                                           |  reward model is
                      reinforce_plus_plus  advantage=reinforce_plus_plus                            /  the ONLY reward
                      grpo_rule            advantage=grpo on the rule reward itself (the reference point)
                    with held-out greedy accuracy by the rule checker every eval_steps           -> OUT/rl/NAME
                    (the runs on the learned reward also log the rule checker's verdict on their training samples,
                    at weight 0: rewards/gsm8k)
  4. plot:          the curves of every run in one PNG, and OUT/result.json with every number   -> OUT/rlhf_pipeline.png

    python recipes/rlhf_pipeline.py --output_dir runs/rlhf --png docs/img/rlhf_pipeline.png  # all (hours on a CPU)
    python recipes/rlhf_pipeline.py --output_dir runs/rlhf --pref_prompts 4 --pref_test_prompts 4 --rm_max_steps 2 \\
        --rl_steps 2 --eval_examples 4 --eval_steps 1                                # every stage, smallest budgets
    python recipes/rlhf_pipeline.py --output_dir runs/rlhf --stages rl plot --runs ppo  # one run again, then the plot

Every flag is a PipelineConfig field (`--help` lists them); OUT is --output_dir, where each stage reads what the
earlier stages wrote.
Each stage is also its own recipe, to run alone (or with `accelerate launch` on several GPUs).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.llm.config import _h  # noqa: E402
from llmrl.utils import parse_config  # noqa: E402

STAGES = ("data", "reward_model", "rl", "plot")
RUNS = ("ppo", "grpo", "reinforce_plus_plus", "grpo_rule")
ADVANTAGE = {"ppo": "gae", "grpo": "grpo", "reinforce_plus_plus": "reinforce_plus_plus", "grpo_rule": "grpo"}


@dataclass
class PipelineConfig:
    output_dir: str = _h("Directory of the whole pipeline: preferences/, reward_model/, rl/NAME/, result.json, the "
                         "PNG.", default="runs/rlhf")
    stages: list[str] = _h(f"Stages to run, in order: {' '.join(STAGES)}.", default_factory=lambda: list(STAGES))
    runs: list[str] = _h(f"RL runs of the rl stage: {' '.join(RUNS)}.", default_factory=lambda: list(RUNS))
    model: str = _h("The policy (and the reward model's backbone): hub id, directory, .gguf or 'bundled'.",
                    default="bundled")
    dataset: str = _h("Prompt dataset with train and test splits (question/answer columns).", default="arithmetic")
    system_prompt: str | None = _h("System message before each question (default: the GSM8K instruction).",
                                   default=None)
    dtype: str = _h("auto | float32 | bfloat16, for every stage.", default="auto")
    seed: int = _h("Seed of every stage.", default=0)
    max_new_tokens: int = _h("Longest completion, in every stage.", default=96)
    rule_reward_funcs: list[str] = _h("The rule checker: labels the preference pairs (accepted = every function "
                                      "gives 1) and is grpo_rule's reward.",
                                      default_factory=lambda: ["gsm8k", "format"])
    eval_reward: str = _h("Rule reward whose mean over greedy completions is the held-out accuracy (0/1).",
                          default="gsm8k")
    # --- 1. preference data ---
    pref_prompts: int = _h("Training questions sampled for preference pairs (the bundled model writes an accepted "
                           "answer to a few percent of them at T=0.7: many questions make a few hundred pairs).",
                           default=256)
    pref_test_prompts: int = _h("Held-out questions (test split) for the reward model's pairwise accuracy (0 = "
                                "none, no accuracy).", default=64)
    pref_generations: int = _h("Completions sampled per question for pairing.", default=8)
    # --- 2. reward model ---
    rm_epochs: float = _h("Passes over the training pairs (when rm_max_steps is -1).", default=2.0)
    rm_max_steps: int = _h("Reward-model optimizer steps (-1: from rm_epochs).", default=-1)
    rm_batch_size: int = _h("Pairs per reward-model step.", default=8)
    rm_learning_rate: float = _h("Reward-model learning rate (LoRA r=16 and its head).", default=1e-4)
    # --- 3. RL, the same budget for every run ---
    rl_steps: int = _h("Steps of every RL run.", default=100)
    prompts_per_step: int = _h("Prompts per step.", default=2)
    num_generations: int = _h("Completions per prompt (G).", default=8)
    learning_rate: float = _h("Policy learning rate (LoRA r=16; the critic's too).", default=1e-4)
    beta: float = _h("KL coefficient to the reference policy, every run (in the loss for grpo, per token in the "
                     "reward for ppo and reinforce_plus_plus).", default=0.02)
    critic_model: str = _h("ppo's critic starts from the trained 'reward_model' (as OpenRLHF) or the 'policy'.",
                           default="reward_model")
    eval_examples: int = _h("Held-out questions (test split) of every greedy evaluation.", default=200)
    eval_steps: int = _h("Evaluate every N steps (and at the last).", default=25)
    png: str | None = _h("Also copy the PNG here (e.g. docs/img/rlhf_pipeline.png).", default=None)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"PipelineConfig: {msg}")

        need(all(s in STAGES for s in self.stages), f"stages must be among {STAGES}, got {self.stages}")
        need(self.pref_test_prompts >= 0, f"pref_test_prompts must be >= 0, got {self.pref_test_prompts}")
        need(all(r in RUNS for r in self.runs), f"runs must be among {RUNS}, got {self.runs}")
        need(self.critic_model in ("reward_model", "policy"),
             f"critic_model must be reward_model or policy, got {self.critic_model!r}")
        for name in ("pref_prompts", "pref_generations", "rm_batch_size", "rl_steps", "prompts_per_step",
                     "num_generations", "eval_examples", "eval_steps", "max_new_tokens"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")


def _path(cfg: PipelineConfig, *parts: str) -> str:
    return os.path.join(cfg.output_dir, *parts)


def _system_prompt(cfg: PipelineConfig) -> list[str]:
    return [] if cfg.system_prompt is None else ["--system_prompt", cfg.system_prompt]


def make_preferences(cfg: PipelineConfig) -> dict:
    """Stage 1: OUT/preferences/{train,test}.jsonl; a split without a pair stops it in one line (the flags to
    raise are this recipe's)."""
    from llmrl.llm import preference_data

    if os.path.exists(_path(cfg, "preference_data.json")):  # an earlier run's report must not outlive its data
        os.remove(_path(cfg, "preference_data.json"))
    report = preference_data.main([
        "--model", cfg.model, "--dataset", cfg.dataset, "--output_dir", _path(cfg, "preferences"),
        "--overwrite_output_dir", "--num_prompts",
        str(cfg.pref_prompts), "--num_test_prompts", str(cfg.pref_test_prompts), "--num_generations",
        str(cfg.pref_generations), "--max_new_tokens", str(cfg.max_new_tokens), "--reward_funcs",
        *cfg.rule_reward_funcs, "--seed", str(cfg.seed), "--dtype", cfg.dtype, *_system_prompt(cfg)],
        no_pair_fix={split: f"raise {flag} or --pref_generations"
                     for split, flag in (("train", "--pref_prompts"), ("test", "--pref_test_prompts"))})
    with open(_path(cfg, "preference_data.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def train_reward_model(cfg: PipelineConfig) -> dict:
    """Stage 2: OUT/reward_model/final (a merged scalar-head model) and its held-out pairwise accuracy."""
    from recipes import reward_model

    try:
        with open(_path(cfg, "preference_data.json")) as f:
            has_test = "test" in json.load(f)  # held-out pairs were made (pref_test_prompts > 0)
    except FileNotFoundError:
        raise FileNotFoundError(f"reward_model stage: no preference data in {cfg.output_dir} (no "
                                f"preference_data.json); run the data stage") from None
    return reward_model.main([
        "--model", cfg.model, "--dataset", _path(cfg, "preferences"), "--output_dir", _path(cfg, "reward_model"),
        "--overwrite_output_dir", "--report_to", "none", "--dtype", cfg.dtype, "--seed", str(cfg.seed),
        "--num_train_epochs", str(cfg.rm_epochs), "--max_steps", str(cfg.rm_max_steps), "--per_device_batch_size",
        str(cfg.rm_batch_size), "--micro_batch_size", str(cfg.rm_batch_size), "--learning_rate",
        str(cfg.rm_learning_rate), "--save_steps", "0", "--eval_steps", "0",
        *(["--eval_dataset", _path(cfg, "preferences")] if has_test else ["--eval_fraction", "0"])])


def rl_arguments(cfg: PipelineConfig, name: str, evaluate_before: bool) -> list[str]:
    """recipes/grpo_gsm8k.py's flags for run `name`: the same budget and settings for all, its reward and
    advantage estimator."""
    flags = ["--model", cfg.model, "--dataset", cfg.dataset, "--output_dir", _path(cfg, "rl", name),
             "--overwrite_output_dir", "--report_to", "none", "--dtype", cfg.dtype, "--seed", str(cfg.seed),
             "--max_steps", str(cfg.rl_steps),
             "--per_device_batch_size", str(cfg.prompts_per_step * cfg.num_generations),
             "--num_generations", str(cfg.num_generations), "--max_new_tokens", str(cfg.max_new_tokens),
             "--learning_rate", str(cfg.learning_rate), "--lr_scheduler", "constant", "--beta", str(cfg.beta),
             "--advantage", ADVANTAGE[name], "--eval_examples", str(cfg.eval_examples), "--eval_steps",
             str(cfg.eval_steps), "--eval_reward", cfg.eval_reward, "--eval_before", str(evaluate_before).lower(),
             "--save_steps", "0", *_system_prompt(cfg)]
    if name == "grpo_rule":
        return flags + ["--reward_funcs", *cfg.rule_reward_funcs]
    reward_model = _path(cfg, "reward_model", "final")
    if not os.path.isdir(reward_model):
        raise FileNotFoundError(f"run {name}: no trained reward model at {reward_model}; run the reward_model stage")
    # the learned reward model is the only reward; the rule checker is logged beside it at weight 0
    flags += ["--reward_model", reward_model, "--reward_funcs", "reward_model", *cfg.rule_reward_funcs,
              "--reward_weights", "1", *["0"] * len(cfg.rule_reward_funcs)]
    if name == "ppo" and cfg.critic_model == "reward_model":
        flags += ["--critic_model", reward_model]
    return flags


def run_rl(cfg: PipelineConfig) -> None:
    """Stage 3: each run in OUT/rl/NAME (metrics.jsonl, eval.json); the base model is evaluated once, by the
    first run."""
    from recipes import grpo_gsm8k

    for i, name in enumerate(cfg.runs):
        print(f"=== rl: {name} ===", flush=True)
        grpo_gsm8k.main(rl_arguments(cfg, name, evaluate_before=i == 0))


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(cfg: PipelineConfig) -> dict:
    """Every number of the pipeline from what the stages wrote: preference-data and reward-model results, and per
    run the greedy accuracy before and after, its curve, and its training rewards."""
    result = {"budget": {"steps": cfg.rl_steps, "prompts_per_step": cfg.prompts_per_step,
                         "num_generations": cfg.num_generations, "max_new_tokens": cfg.max_new_tokens,
                         "completions_per_run": cfg.rl_steps * cfg.prompts_per_step * cfg.num_generations,
                         "learning_rate": cfg.learning_rate, "beta": cfg.beta, "eval_examples": cfg.eval_examples},
              "runs": {}}
    rm_eval = _path(cfg, "reward_model", "eval.json")
    if os.path.isfile(rm_eval):
        with open(rm_eval) as f:
            result["reward_model"] = json.load(f)
    for name in RUNS:
        run = _path(cfg, "rl", name)
        if not os.path.isfile(os.path.join(run, "eval.json")):
            continue
        with open(os.path.join(run, "eval.json")) as f:
            evaluation = json.load(f)
        rows = _read_jsonl(os.path.join(run, "metrics.jsonl"))
        if "before" in evaluation:
            result["base_accuracy"] = evaluation["before"]["accuracy"]
        result["runs"][name] = {
            "advantage": ADVANTAGE[name], "reward": "rule" if name == "grpo_rule" else "reward_model",
            "accuracy_after": evaluation.get("after", {}).get("accuracy"),
            "accuracy_curve": [[r["step"], r["eval/accuracy"]] for r in rows if "eval/accuracy" in r],
            "rule_reward": [r.get(f"rewards/{cfg.eval_reward}") for r in rows if "reward" in r],
            "reward_model_score": [r.get("rewards/reward_model") for r in rows if "reward" in r],
            "median_step_s": statistics.median([r["step_time"] for r in rows if "step_time" in r] or [float("nan")])}
    return result


def plot(result: dict, path: str, eval_reward: str) -> None:
    """Held-out greedy accuracy, the rule checker's mean on the training samples, and the learned reward, per step."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    base = result.get("base_accuracy")

    def smooth(ys):
        ys = np.asarray([np.nan if y is None else y for y in ys], dtype=float)
        k = max(1, min(10, len(ys) // 5))
        return np.convolve(np.nan_to_num(ys), np.ones(k) / k, mode="valid"), k

    for name, run in result["runs"].items():
        curve = ([[0, base]] if base is not None else []) + run["accuracy_curve"]
        label = f"{name} ({'rule' if run['reward'] == 'rule' else 'learned'} reward)"
        line, = axes[0].plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=label)
        for ax, key in ((axes[1], "rule_reward"), (axes[2], "reward_model_score")):
            if run[key] and any(v is not None for v in run[key]):
                ys, k = smooth(run[key])
                ax.plot(np.arange(k, k + len(ys)), ys, color=line.get_color(), label=label)
    axes[0].set(xlabel="step", ylabel=f"held-out greedy accuracy ({eval_reward})", title="rule-checked accuracy")
    axes[1].set(xlabel="step", ylabel=f"mean rewards/{eval_reward} of the samples",
                title="rule checker on training samples (moving avg)")
    axes[2].set(xlabel="step", ylabel="mean learned reward", title="learned reward model score (moving avg)")
    axes[0].legend(fontsize=8)
    rm = result.get("reward_model", {})
    if "eval/accuracy" in rm:
        axes[2].text(0.02, 0.02, f"reward model pairwise accuracy {rm['eval/accuracy']:.3f} ({rm['eval/pairs']} "
                                 f"held-out pairs)", transform=axes[2].transAxes, fontsize=8)
    fig.suptitle(f"offline RLHF, equal budgets: {result['budget']['completions_per_run']} completions per run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict) -> str:
    """The result as a markdown table (for docs/BENCHMARKS.md)."""
    lines = ["| run | advantage | reward | greedy accuracy before | after | median step s |",
             "|---|---|---|---|---|---|"]
    before = result.get("base_accuracy", float("nan"))
    for name, run in result["runs"].items():
        after = "-" if run["accuracy_after"] is None else f"{run['accuracy_after']:.3f}"
        lines.append(f"| {name} | {run['advantage']} | {run['reward']} | {before:.3f} | {after} | "
                     f"{run['median_step_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    cfg = parse_config(PipelineConfig, argv)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if "data" in cfg.stages:
        print("=== data: preference pairs ===", flush=True)
        make_preferences(cfg)
    if "reward_model" in cfg.stages:
        print("=== reward model ===", flush=True)
        train_reward_model(cfg)
    if "rl" in cfg.stages:
        run_rl(cfg)
    result = collect(cfg)
    if os.path.isfile(_path(cfg, "preference_data.json")):
        with open(_path(cfg, "preference_data.json")) as f:
            result["preference_data"] = json.load(f)
    with open(_path(cfg, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    if "plot" in cfg.stages and result["runs"]:
        png = _path(cfg, "rlhf_pipeline.png")
        plot(result, png, cfg.eval_reward)
        if cfg.png:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.png)), exist_ok=True)
            shutil.copyfile(png, cfg.png)
        print(f"curves: {png}")
    print(table(result), flush=True)
    return result


if __name__ == "__main__":
    main()
