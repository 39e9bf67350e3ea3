"""The `llmrl` command (issue 17.4): each subcommand parses the same config as its recipe, --config YAML files (flags
on the command line win), one-line errors, and `python -m llmrl.cli` / `accelerate launch -m llmrl.cli`."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmrl import cli
from llmrl.utils import parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command, module, config", [
    ("grpo", "llmrl.scripts.grpo", "GRPOConfig"), ("eval", "llmrl.scripts.grpo", "GRPOConfig"),
    ("rm", "llmrl.scripts.reward_model", "RewardConfig"),
    ("preferences", "llmrl.llm.preference_data", "PreferenceDataConfig")])
def test_each_subcommand_parses_the_recipes_config(monkeypatch, tmp_path, command, module, config):
    """Same flags, same config as parse_config of the recipe's dataclass; a YAML file gives defaults that a flag
    overrides."""
    import importlib
    mod = importlib.import_module(module)
    cls = getattr(mod, config) if hasattr(mod, config) else getattr(importlib.import_module(
        "llmrl.llm.config" if config == "GRPOConfig" else "llmrl.llm.reward_trainer"), config)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("seed: 7\nlearning_rate: 3.0e-4\n" if config != "PreferenceDataConfig" else
                         "seed: 7\nnum_prompts: 5\n")
    flags = ["--config", str(yaml_file), "--seed", "9", "--output_dir", str(tmp_path / "o")]
    parsed = []

    class Stop(Exception):
        pass

    def record(c, argv=None, defaults=None, checked=True, **help_options):
        out = parse_config(c, argv, defaults, checked=checked, **help_options)
        if not checked:  # the unchecked look at the flags that finds the run a --resume continues
            return out
        parsed.append(out)
        raise Stop
    monkeypatch.setattr(mod, "parse_config", record)
    with pytest.raises(Stop):
        cli.main([command, *flags])
    got = parsed[0][0] if isinstance(parsed[0], tuple) else parsed[0]
    want = parse_config(cls, flags)
    assert got == want and got.seed == 9  # the flag beats the file
    if config == "PreferenceDataConfig":
        assert got.num_prompts == 5
    else:
        assert got.learning_rate == 3e-4  # from the file


def test_unknown_command_and_flag_are_one_line_with_exit_2():
    for argv, words in ((["grop"], "unknown command 'grop'; did you mean grpo?"),
                        (["grpo", "--lr", "1e-3"], "unknown flag --lr; did you mean --learning_rate")):
        res = subprocess.run([sys.executable, "-m", "llmrl.cli", *argv], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 2 and words in res.stderr and res.stderr.count("\n") == 1


def test_bad_config_file_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    res = subprocess.run([sys.executable, "-m", "llmrl.cli", "grpo", "--config", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "must hold a mapping" in res.stderr and res.stderr.count("\n") == 1
    (tmp_path / "typo.yaml").write_text("learning_rat: 1.0e-4\n")
    res = subprocess.run([sys.executable, "-m", "llmrl.cli", "grpo", "--config", str(tmp_path / "typo.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "unknown flag --learning_rat; did you mean --learning_rate" in res.stderr


def test_usage_and_accelerate_launch_module(tmp_path):
    res = subprocess.run([sys.executable, "-m", "llmrl.cli"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and all(name in res.stdout for name in cli.COMMANDS)
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                          "-m", "llmrl.cli", "plot", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "metrics.jsonl" in res.stdout


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeeds_cpu_notice_stays_out_of_a_run_without_deepspeed():
    """accelerate imports DeepSpeed (when installed) at every model unwrap, as saving a model does; on a machine
    without a GPU its import logs "Setting accelerator to CPU" into the progress bars: an llmrl command drops it."""
    unwrap = ("import torch; from accelerate.utils import extract_model_from_parallel; "
              "print(type(extract_model_from_parallel(torch.nn.Linear(1, 1))).__name__)")
    for code, shown in ((unwrap, True),  # the notice, outside an llmrl command
                        (f"from llmrl.utils import cli_main; cli_main(lambda: exec({unwrap!r}))", False)):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        assert res.returncode == 0 and res.stdout.strip().endswith("Linear"), res.stderr
        assert ("Setting accelerator to CPU" in res.stdout + res.stderr) == shown


def test_eval_help_lists_the_evaluations_settings(capsys):
    """`llmrl eval --help` lists what the evaluation reads, not the training flags (which are still accepted)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: llmrl eval ")
    assert "default 200" in out and "--bf16" in out and "--per_device_eval_batch_size" in out  # TRL names it reads
    for flag in ("--adapter", "--model", "--eval_examples", "--eval_pass_k", "--max_new_tokens", "--output_dir"):
        assert flag in out, flag
    for flag in ("--learning_rate", "--beta", "--num_generations", "--save_steps", "--lora_r"):
        assert flag not in out, flag
    from llmrl.llm.config import GRPOConfig
    from llmrl.scripts.grpo import EVAL_SETTINGS
    from llmrl.utils import parse_config
    cfg = parse_config(GRPOConfig, ["--learning_rate", "0.5", "--eval_examples", "3"], shown=EVAL_SETTINGS)
    assert cfg.learning_rate == 0.5 and cfg.eval_examples == 3
    with pytest.raises(SystemExit) as e:
        cli.main(["grpo", "--help"])
    assert "--learning_rate" in capsys.readouterr().out  # training lists everything
