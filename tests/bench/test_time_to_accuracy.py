"""bench/time_to_accuracy.py's bookkeeping: which step first reaches the target and the training seconds until then
(hand values), and the checkpoints a run directory holds."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))

from time_to_accuracy import saved_steps, time_to_target  # noqa: E402

SECONDS = [10.0, 20.0, 30.0, 40.0]  # steps 1..4
ACCURACY = {0: 0.30, 2: 0.85, 4: 0.95}  # step 0 = the base model


@pytest.mark.parametrize("target, step, seconds", [
    (0.9, 4, 100.0),   # steps 1-4: 10 + 20 + 30 + 40
    (0.85, 2, 30.0),   # reaching the target exactly counts; steps 1-2 only
    (0.3, 0, 0.0),     # the base model already there: no training
    (0.99, None, None),  # never reached: no number
])
def test_time_to_target_sums_the_steps_up_to_the_first_reaching_one(target, step, seconds):
    assert time_to_target(SECONDS, ACCURACY, target) == {"step": step, "seconds": seconds}


def test_time_to_target_refuses_an_accuracy_past_the_logged_steps():
    with pytest.raises(ValueError, match="step 5 but step times of only 4 steps"):
        time_to_target(SECONDS, {0: 0.3, 5: 0.95}, 0.9)


def test_saved_steps_in_numeric_order_without_other_directories(tmp_path):
    for name in ("checkpoint-8", "checkpoint-12", "checkpoint-4", "checkpoint-16.tmp", "final"):
        (tmp_path / name).mkdir()
    assert saved_steps(str(tmp_path)) == [4, 8, 12]
