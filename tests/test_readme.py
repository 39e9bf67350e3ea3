"""The README's LLM commands, in order, as written: each ```bash block after the first (`make demo` / `make test`,
which CI runs itself) and before the classic section (tests/classic/test_recipes.py runs that one), with small
budgets appended (later flags win) and nothing written outside the test's folder. A command that needs the hub
ends in one line and exit code 2 (the hub is unreachable here, and forced offline). The Python snippet runs too.

Slow-ish (the real bundled model, loaded once per command): about a minute per section on a 2-core CPU."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HUB_IDS = ("openai/gsm8k", "Qwen/")
# labels preference pairs by a rule the bundled model meets about half the time at any budget (the README's rule
# rewards need a correct, well-formatted answer: rare in 8 tokens)
RULE = "def even_length(prompts, completions, **kw):\n    return [float(len(c) % 2 == 0) for c in completions]\n"
SMALL = {  # appended to every command of that kind
    "grpo": ["--per_device_batch_size", "4", "--num_generations", "2", "--micro_batch_size", "4",
             "--max_new_tokens", "8", "--report_to", "none", "--torch_threads", "1"],
    "eval": ["--max_new_tokens", "8", "--torch_threads", "1"],
    "preferences": ["--num_test_prompts", "2", "--num_generations", "4", "--max_new_tokens", "8",
                    "--reward_funcs", "rule.py:even_length", "--torch_threads", "1"],
    "rm": ["--max_steps", "1", "--per_device_batch_size", "2", "--micro_batch_size", "2", "--report_to", "none",
           "--torch_threads", "1"],
    "rlhf_pipeline": ["--pref_prompts", "4", "--pref_test_prompts", "2", "--pref_generations", "4",
                      "--rule_reward_funcs", "rule.py:even_length", "--rm_max_steps", "1", "--rm_batch_size", "2",
                      "--rl_steps", "1", "--prompts_per_step", "2", "--num_generations", "2", "--max_new_tokens", "8",
                      "--eval_examples", "2", "--eval_steps", "1"],
}
SCALED = {"--max_steps": lambda n: str(max(1, int(n) // 20)), "--eval_examples": lambda n: "2",
          "--num_prompts": lambda n: "4"}


def readme() -> str:
    return (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The command lines of the README's LLM bash blocks, in order (comments dropped, `\\` continuations joined)."""
    text = readme().split("## The classic side", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)[1:]
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def kind(argv: list[str]) -> str:
    """Which SMALL budget a command gets: the llmrl subcommand or the recipe's name."""
    for i, a in enumerate(argv):
        if a.startswith("recipes/"):
            return "grpo" if a == "recipes/grpo_gsm8k.py" else Path(a).stem
        if a in ("llmrl", "llmrl.cli"):
            return argv[i + 1]
    raise AssertionError(f"no llmrl command in {argv}")


def shrink(argv: list[str]) -> list[str]:
    """The command with its budgets scaled down: SCALED flags' values replaced, SMALL appended."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a in SCALED:
            out[i + 1] = SCALED[a](out[i + 1])
    name = kind(argv)
    if name == "grpo" and "--max_steps" not in out:
        out += ["--max_steps", "1"]
    return out + SMALL.get(name, [])


def executable(argv: list[str]) -> list[str]:
    """The programs of the venv that runs this test (`llmrl`, `python`, `torchrun`, `accelerate`)."""
    program = {"python": sys.executable}.get(argv[0], str(BIN / argv[0]))
    assert os.path.isfile(program), f"{argv[0]} is not installed in {BIN}"
    return [program] + argv[1:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder standing in for the clone's root: recipes/ and configs/ copied (llmrl imports from the clone through
    PYTHONPATH), runs/ written here."""
    d = tmp_path_factory.mktemp("readme")
    for name in ("recipes", "configs"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    (d / "rule.py").write_text(RULE)
    return d


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readme_opens_with_make_demo_and_make_test():
    first = re.search(r"```bash\n(.*?)```", readme(), re.S).group(1)
    assert [line.split()[:2] for line in first.splitlines() if line.startswith("make")] == [["make", "demo"],
                                                                                           ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo: venv" in makefile and "\ntest: venv" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text() or "pytest" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("line", readme_commands(), ids=lambda line: line[:70])
def test_readme_command_runs_as_written(workdir, line):
    argv = shlex.split(line)
    if "ds_zero" in line:
        pytest.importorskip("deepspeed", reason="the README's DeepSpeed line needs `pip install -e '.[deepspeed]'`")
    result = run(executable(shrink(argv)), workdir)
    if any(h in line for h in HUB_IDS):  # needs the hub: one line, exit code 2, nothing loaded
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[-2000:]
        assert "hub" in result.stderr.lower() or "offline" in result.stderr.lower()
        return
    assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


def test_readme_python_snippet_runs(workdir):
    snippet = re.search(r"```python\n(.*?)```", readme(), re.S).group(1)
    snippet = snippet.replace("GRPOConfig(", "GRPOConfig(report_to='none', torch_threads=1, ", 1)
    result = run([sys.executable, "-c", snippet], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "runs" / "brevity" / "final" / "adapter_config.json").is_file()
