import json
import re
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from llmrl import cli
from llmrl.plot import (NO_SIGNAL, default_keys, main, moving_average, no_signal_steps, numeric_keys, plot_run,
                        read_metrics, run, run_figure)
from llmrl.utils import RunLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_rows(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def llm_rows(n=5):
    return [{"step": s, "time": 0.1 * s, "reward": 0.1 * s, "reward_std": 0.2, "rewards/gsm8k": 0.1 * s,
             "rewards/format": 0.5, "rewards/format/std": 0.1, "kl": 0.01 * s, "completion_length": 40 + s,
             "loss": -0.1, "lr": 1e-5} for s in range(n)]


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def one_line_error(capsys, monkeypatch, argv) -> str:
    """stderr of the `llmrl-plot ARGV` script (llmrl.plot.run), which must exit with code 2."""
    monkeypatch.setattr(sys, "argv", ["llmrl-plot", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


def test_bad_flags_are_one_line_and_help_names_the_command(capsys, monkeypatch):
    assert one_line_error(capsys, monkeypatch, ["--keyz", "x"]).startswith("error: unrecognized arguments: --keyz")
    for argv, usage in ((["plot", "--help"], "usage: llmrl plot "), (["grpo", "--help"], "usage: llmrl grpo ")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0 and capsys.readouterr().out.startswith(usage)


def test_llm_run_default_keys_and_png(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", llm_rows())
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert default_keys(list(rows[0])) == ["reward", "rewards/format", "rewards/gsm8k", "kl", "completion_length",
                                           "loss"]
    out = plot_run(str(tmp_path))
    assert out == str(tmp_path / "curves.png")
    assert_png(out)


def test_a_single_reward_function_does_not_repeat_the_reward_panel():
    assert default_keys(["reward", "rewards/gsm8k", "rewards/gsm8k/std", "loss"]) == ["reward", "loss"]
    assert default_keys(["rewards/gsm8k", "loss"]) == ["rewards/gsm8k", "loss"]


def test_classic_run_with_run_logger(tmp_path):
    logger = RunLogger(str(tmp_path), tensorboard=False)
    for step in range(30):
        logger.log({"episode_return": float(step % 7), "epsilon": 1.0 - step / 30}, step=step)
    logger.close()
    assert default_keys(["time", "episode_return", "epsilon"]) == ["episode_return"]
    out = tmp_path / "sub" / "c.png"
    main([str(tmp_path), "--out", str(out), "--keys", "episode_return", "epsilon"])
    assert_png(out)


def test_moving_average_hand_values():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(np.array([2.0, 4.0, 9.0]), 5), [2.0, 3.0, 5.0])
    np.testing.assert_allclose(moving_average(np.array([2.0, 4.0]), 1), [2.0, 4.0])


def test_truncated_last_line_is_skipped(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", llm_rows(3), tail='{"step": 3, "reward": 0.')
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [0, 1, 2]
    assert_png(plot_run(str(tmp_path)))


def test_corrupt_middle_line_and_missing_step_are_errors(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1}\n{"step": 1, "lo\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"read_metrics: line 2 of .* is not valid JSON"):
        read_metrics(str(path))
    path.write_text('{"step": 0, "loss": 1}\n{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"read_metrics: line 2 of .* has no 'step'"):
        read_metrics(str(path))


def test_unknown_key_lists_available(tmp_path, capsys, monkeypatch):
    write_rows(tmp_path / "metrics.jsonl", llm_rows())
    with pytest.raises(ValueError, match=r"^plot_run: no numeric key 'rewardz' in .*; available: time, reward, "
                                         r"reward_std, rewards/gsm8k, rewards/format, rewards/format/std, kl, "
                                         r"completion_length, loss, lr$"):
        plot_run(str(tmp_path), keys=["reward", "rewardz"])
    assert one_line_error(capsys, monkeypatch, [str(tmp_path), "--keys", "rewardz"]).startswith(
        "error: plot_run: no numeric key 'rewardz'")


def test_no_default_keys_is_an_error(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [{"step": 0, "custom": 1.0}])
    with pytest.raises(ValueError, match=r"none of the default keys .*; pick some with --keys from: custom$"):
        plot_run(str(tmp_path))


def test_missing_run_dir_or_metrics(tmp_path, capsys, monkeypatch):
    assert re.fullmatch(r"error: plot_run: run directory .*nope does not exist\n",
                        one_line_error(capsys, monkeypatch, [str(tmp_path / "nope")]))
    with pytest.raises(FileNotFoundError, match="nope does not exist"):  # `llmrl plot` ends it in one line
        cli.main(["plot", str(tmp_path / "nope")])
    with pytest.raises(FileNotFoundError, match=r"read_metrics: .*metrics\.jsonl does not exist"):
        plot_run(str(tmp_path))


def _eval_run(tmp_path, results=None):
    rows = llm_rows(7)
    for r in rows[2::2] + [rows[-1]]:
        r.update({"eval/accuracy": 0.1 * r["step"], "eval/pass@4": 0.15 * r["step"]})
    write_rows(tmp_path / "metrics.jsonl", rows)
    if results is not None:
        (tmp_path / "eval.json").write_text(json.dumps(results))


def test_eval_metrics_share_a_panel_with_the_before_after_marks(tmp_path):
    _eval_run(tmp_path, {"before": {"accuracy": 0.25, "n": 16}, "after": 0.5, "adapter x on d/test n=16": {}})
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert default_keys(numeric_keys(rows))[-2:] == ["eval/accuracy", "eval/pass@4"]
    fig = run_figure(str(tmp_path))
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["reward", "rewards/format", "rewards/gsm8k", "kl",
                                                "completion_length", "loss", "eval"]
    lines = {line.get_label(): line for line in axes[-1].get_lines()}
    assert list(lines["eval/accuracy"].get_xdata()) == [2, 4, 6] and \
        list(lines["eval/pass@4"].get_ydata()) == pytest.approx([0.3, 0.6, 0.9])
    before, after = lines["accuracy before training: 0.250"], lines["accuracy after training: 0.500"]
    assert (list(before.get_xdata()), list(before.get_ydata())) == ([0], [0.25])
    assert (list(after.get_xdata()), list(after.get_ydata())) == ([6], [0.5])
    assert_png(plot_run(str(tmp_path)))


def test_before_after_marks_get_a_panel_of_their_own_and_steps_are_integers(tmp_path, capsys, monkeypatch):
    write_rows(tmp_path / "metrics.jsonl", llm_rows(3))
    (tmp_path / "eval.json").write_text(json.dumps({"before": {"accuracy": 0.25}}))
    fig = run_figure(str(tmp_path), keys=None)
    assert fig.axes[-1].get_ylabel() == "eval" and len(fig.axes) == 7
    fig.canvas.draw()
    ticks = fig.axes[-1].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    assert [ax.get_ylabel() for ax in run_figure(str(tmp_path), keys=["reward"]).axes] == ["reward"]
    (tmp_path / "eval.json").write_text("{broken")
    assert re.fullmatch(r"error: .*eval\.json is not valid JSON\n",
                        one_line_error(capsys, monkeypatch, [str(tmp_path)]))


def test_steps_without_learning_signal_are_shaded_on_the_reward_panel(tmp_path):
    rows = llm_rows(5)
    for r, frac in zip(rows, [0.5, 1.0, 0.0, 1, 0.75]):
        r["frac_zero_std_groups"] = frac
    write_rows(tmp_path / "metrics.jsonl", rows)
    assert no_signal_steps(read_metrics(str(tmp_path / "metrics.jsonl"))) == [1, 3]
    reward_ax = run_figure(str(tmp_path)).axes[0]
    spans = sorted((p.get_x(), p.get_width()) for p in reward_ax.patches)
    assert spans == [pytest.approx((0.5, 1.0)), pytest.approx((2.5, 1.0))]
    assert reward_ax.get_legend_handles_labels()[1].count(NO_SIGNAL) == 1 and reward_ax.get_legend() is not None
    rows[1]["frac_zero_std_groups"] = rows[3]["frac_zero_std_groups"] = 0.9
    write_rows(tmp_path / "metrics.jsonl", rows)
    reward_ax = run_figure(str(tmp_path)).axes[0]
    assert not reward_ax.patches and reward_ax.get_legend() is None
