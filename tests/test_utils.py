"""The recipes' command line (parse_config, cli_main), file permissions of atomic writes, and run directories."""
import os
import stat
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import pytest

from llmrl.utils import atomic_write_text, close_flags, cli_main, parse_config, prepare_output_dir


@dataclass
class Cfg:
    ALIASES: ClassVar[dict[str, str]] = {"lr": "learning_rate", "n_envs": "num_envs"}

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium id"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size"})
    num_envs: int = field(default=8, metadata={"help": "parallel envs"})
    save: bool = field(default=True, metadata={"help": "save the agent", "help_off": "keep nothing on disk"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars"})
    clip: Optional[float] = field(default=None, metadata={"help": "clip range"})
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "widths"})

    def __post_init__(self):
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")


@dataclass
class Extra:
    eval_only: bool = field(default=False, metadata={"help": "only evaluate"})


def _error(capsys, argv, cls=Cfg) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(cls, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no usage block
    return err.strip()


def test_flags_aliases_bools_lists_and_recipe_defaults():
    cfg = parse_config(Cfg, ["--lr", "0.5", "--n_envs", "3", "--no_save", "--tensorboard", "false", "--clip",
                             "0.2", "--hidden_sizes", "8", "8", "8"], defaults={"env_id": "Pendulum-v1"})
    assert cfg == Cfg(env_id="Pendulum-v1", learning_rate=0.5, num_envs=3, save=False, tensorboard=False, clip=0.2,
                      hidden_sizes=[8, 8, 8])
    assert parse_config(Cfg, ["--env_id", "Acrobot-v1"], defaults={"env_id": "Pendulum-v1"}).env_id == "Acrobot-v1"
    cfg, extra = parse_config((Cfg, Extra), ["--eval_only", "--num_envs", "2"])
    assert (cfg.num_envs, extra.eval_only) == (2, True)
    with pytest.raises(TypeError, match="defaults name no field"):
        parse_config(Cfg, [], defaults={"seed": 1})


def test_no_abbreviations_and_unknown_flags_name_the_closest_fields(capsys):
    # argparse used to guess: "--env" -> "ambiguous option: --env could match --env_id, --env-id"
    assert _error(capsys, ["--env", "FrozenLake-v1"]) == "error: unknown flag --env; did you mean --env_id?"
    assert _error(capsys, ["--learning_rat", "1"]) == ("error: unknown flag --learning_rat; "
                                                       "did you mean --learning_rate?")
    assert _error(capsys, ["--seed", "1"]) == "error: unknown flag --seed; see --help"
    assert _error(capsys, ["--lr=0.1", "--sead", "1"]) == "error: unknown flag --sead; see --help"
    assert _error(capsys, ["stray"]) == "error: unexpected argument 'stray' (every setting is a --flag; see --help)"
    assert "invalid int value: 'x'" in _error(capsys, ["--num_envs", "x"])
    # without the alias, --lr is suggested from the initials of learning_rate
    assert close_flags("--lr", ["learning_rate", "log_std_init", "num_envs"]) == ["learning_rate"]


def test_a_value_the_config_refuses_raises_its_value_error():
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        parse_config(Cfg, ["--num_envs", "0"])


def test_aliases_must_name_fields():
    @dataclass
    class Bad:
        ALIASES: ClassVar[dict[str, str]] = {"lr": "step_size"}
        learning_rate: float = 1.0

    with pytest.raises(TypeError, match="step_size"):
        parse_config(Bad, [])


def test_help_of_no_flags_says_what_turning_off_does(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"])
    help_of, flag = {}, None
    for line in capsys.readouterr().out.splitlines():  # an entry: "  --flag ..." and its indented continuation
        if line.startswith("  --"):
            flag = line.split()[0].rstrip(",")
            help_of[flag] = line
        elif flag and line.startswith("     "):
            help_of[flag] += " " + line.strip()
    assert "keep nothing on disk" in help_of["--no_save"] and "save the agent" not in help_of["--no_save"]
    assert "Same as --tensorboard False." in help_of["--no_tensorboard"]
    assert "(default: False)" not in help_of["--no_save"] + help_of["--no_tensorboard"]
    assert "--lr" in help_of["--learning_rate"]  # aliases are listed with their field


def _raiser(exc):
    def main():
        raise exc
    return main


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError, FileExistsError])
def test_cli_main_user_errors_are_one_line_and_exit_2(capsys, monkeypatch, error):
    monkeypatch.delenv("LLMRL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(_raiser(error("output_dir x holds a run;\n pass --overwrite_output_dir")))
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == "error: output_dir x holds a run; pass --overwrite_output_dir\n"
    monkeypatch.setenv("LLMRL_DEBUG", "1")  # the traceback on request
    with pytest.raises(error, match="bad"):
        cli_main(_raiser(error("bad")))


def test_cli_main_keeps_the_traceback_of_bugs(monkeypatch):
    monkeypatch.delenv("LLMRL_DEBUG", raising=False)
    with pytest.raises(KeyError):
        cli_main(_raiser(KeyError("missing")))
    with pytest.raises(SystemExit) as exit_info:  # a completed main() returns normally; Ctrl-C is exit 130
        cli_main(_raiser(KeyboardInterrupt()))
    assert exit_info.value.code == 130


def test_atomic_write_text_gives_a_normal_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "config.json"
        atomic_write_text(str(path), "{}")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # was 0600 (mkstemp's mode)
        os.umask(0o002)
        atomic_write_text(str(path), "{1}")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o664 and path.read_text() == "{1}"
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind


def test_prepare_output_dir_refuses_or_replaces_an_earlier_run(tmp_path):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events").write_text("x")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a run .*metrics.jsonl, tb.*--overwrite_output_dir"):
        prepare_output_dir(str(tmp_path), False, ("metrics.jsonl", "tb", "agent"))
    assert (tmp_path / "tb" / "events").exists()  # nothing touched
    prepare_output_dir(str(tmp_path), True, ("metrics.jsonl", "tb", "agent"))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # only the run's own files go
    prepare_output_dir(str(tmp_path / "new"), False, ("metrics.jsonl",))  # a new directory is not created yet
    assert not (tmp_path / "new").exists()
