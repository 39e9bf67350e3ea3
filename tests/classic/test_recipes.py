"""The classic recipes as the README gives them: every command of its classic section runs as written (with a
small budget added), flag mistakes get one line and exit code 2, and a rerun never mixes with an earlier run."""
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEEP = ["--total_timesteps", "300", "--eval_episodes", "1", "--no_progress_bar", "--report_to", "none"]
SMALL = {  # flags appended to each README command: a small budget, and nothing written outside the test's folder
    "dp_frozenlake": ["--eval_episodes", "20"],
    "q_learning": ["--total_timesteps", "3000", "--eval_episodes", "20", "--window", "20", "--no_progress_bar"],
    "dqn_cartpole": DEEP, "reinforce_cartpole": DEEP, "a2c_cartpole": DEEP, "ppo_cartpole": DEEP,
    "kl_ppo_cartpole": DEEP, "trpo_cartpole": DEEP, "ppo_pendulum": DEEP + ["--num_steps", "64"],
}


def readme_commands() -> list[list[str]]:
    """The `python recipes/...` commands of the README's classic section, split at `;`, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The classic side", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        for part in line.split("#", 1)[0].split(";"):
            if part.strip():
                commands.append(shlex.split(part))
    return commands


def run_recipe_main(name: str, argv: list[str]):
    """recipes/NAME.py's main(argv), in this process (as `python recipes/NAME.py ARGV` runs it)."""
    return runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name="recipe")["main"](argv)


def test_the_readme_lists_every_classic_recipe():
    names = [Path(cmd[1]).stem for cmd in readme_commands()]
    assert all(cmd[0] == "python" and cmd[1].startswith("recipes/") for cmd in readme_commands())
    assert sorted(names) == sorted(SMALL)


@pytest.mark.parametrize("command", readme_commands(), ids=lambda cmd: " ".join(cmd[1:]))
def test_readme_command_runs_as_written(tmp_path, monkeypatch, command):
    name = Path(command[1]).stem
    monkeypatch.chdir(tmp_path)  # the recipes' default output_dir (runs/...) lands in the test's folder
    run_recipe_main(name, command[2:] + SMALL[name])
    if name != "dp_frozenlake":  # the only recipe that writes nothing
        assert (tmp_path / "runs").is_dir()


def test_flag_mistakes_are_one_line_with_exit_code_2(tmp_path):
    # the README's old command: argparse answered "ambiguous option: --env could match --env_id, --env-id"
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "q_learning.py"), "--env", "FrozenLake-v1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr == "error: unknown flag --env; did you mean --env_id?\n"
    assert not (tmp_path / "runs").exists()
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "ppo_cartpole.py"), "--batch_size", "999"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: batch_size 999 exceeds the rollout size")
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["q_learning", "a2c_cartpole"])
def test_a_rerun_is_refused_unless_overwrite_output_dir(tmp_path, name):
    argv = SMALL[name] + ["--output_dir", str(tmp_path / "run")]
    first = run_recipe_main(name, argv)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_recipe_main(name, argv + ["--seed", "1"])
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    second = run_recipe_main(name, argv + ["--seed", "1", "--overwrite_output_dir"])
    assert (tmp_path / "run" / "metrics.jsonl").read_text() != metrics
    assert json.dumps(first) != json.dumps(second)
    assert sorted(os.listdir(tmp_path / "run")) in (["learning_curve.png", "metrics.jsonl"], ["agent", "metrics.jsonl"])
