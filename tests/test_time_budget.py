"""Training for a wall-clock budget (--max_minutes), and the estimate of the time a run has left."""
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from types import SimpleNamespace

import pytest

import train
from checkpoint import load_checkpoint
from conftest import PROCESS_TIMEOUT, ROOT, TINY_RUN, assert_clean_error, run_in_process, run_script
from optimizers import get_lr
from train import TrainingClock, duration

SCHEDULE = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100, max_iters=10**6,
                           eval_interval=100)


def clock_after(readings, budget_minutes=1.0):
    """A clock that measured readings [(step, training seconds since the previous reading), ...]."""
    clock = TrainingClock(0, 0.0, budget_minutes)
    for step, seconds in readings:
        clock.unread = seconds
        clock.read(step, "cpu")
    return clock


def test_the_clock_counts_only_the_time_between_start_and_pause(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(train.time, "time", lambda: now[0])
    clock = TrainingClock(0, 0.0, 0)
    clock.start()
    now[0] += 2.0  # a training step
    clock.pause()
    now[0] += 50.0  # an evaluation, a save
    clock.start()
    now[0] += 1.0
    clock.pause()
    clock.read(2, "cpu")
    assert clock.at(2) == 3.0 and clock.seconds_per_step == 1.5


def test_between_readings_the_clock_moves_on_at_the_last_measured_pace():
    clock = clock_after([(10, 5.0), (20, 10.0)])
    assert clock.at(20) == 15.0  # measured
    assert clock.at(24) == 19.0  # + 4 steps at 1 s each, the pace of the last interval


def test_with_a_budget_the_schedule_follows_the_fraction_of_it_used():
    clock = clock_after([(10, 30.0)])  # 30 of 60 seconds in 10 steps: half the budget
    assert clock.schedule_position(10, SCHEDULE) == pytest.approx(50.0)  # half of lr_decay_iters
    assert get_lr(clock.schedule_position(10, SCHEDULE), SCHEDULE) == pytest.approx(get_lr(50, SCHEDULE))
    assert clock.schedule_position(30, SCHEDULE) == SCHEDULE.lr_decay_iters  # past the budget: at the end, min_lr
    assert get_lr(clock.schedule_position(30, SCHEDULE), SCHEDULE) == pytest.approx(SCHEDULE.min_lr)
    no_budget = clock_after([(10, 30.0)], budget_minutes=0)
    assert no_budget.schedule_position(10, SCHEDULE) == 10  # the step itself, as without a clock


def test_the_budget_is_spent_when_the_clock_reaches_it():
    clock = clock_after([(10, 50.0)])  # 5 s a step
    assert not clock.out_of_time(11)  # 55 s
    assert clock.out_of_time(12)  # 60 s
    assert not clock_after([(10, 50.0)], budget_minutes=0).out_of_time(10**6)


def test_the_time_left_counts_the_training_and_the_evaluations_on_the_way():
    clock = clock_after([(10, 10.0)], budget_minutes=0)  # 1 s a step
    cfg = SimpleNamespace(**{**vars(SCHEDULE), "max_iters": 300})
    # 290 steps of 1 s, and evaluations at 100, 200 and 300 (the last step) of 5 s each
    assert clock.seconds_left(10, cfg, eval_seconds=5.0) == 290 + 3 * 5
    cfg.max_iters = 310  # one more evaluation, at the last step
    assert clock.seconds_left(10, cfg, eval_seconds=5.0) == 300 + 4 * 5
    budget = clock_after([(10, 10.0)], budget_minutes=1.0)
    assert budget.seconds_left(10, cfg, eval_seconds=0.0) == 50  # the budget ends before max_iters


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (59.6, "1 min"), (12 * 60 + 5, "12 min"),
                                           (3 * 3600 + 12 * 60, "3 h 12 min"), (15 * 86400 + 7200, "15 d 2 h")])
def test_a_duration_is_as_precise_as_a_person_needs(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("flags, message", [
    (["--max_minutes=0"], "--max_minutes=0.0 must be positive"),
    (["--max_minutes=-5"], "--max_minutes=-5.0 must be positive"),
    (["--max_minutes=5", "--warmup_iters=100", "--lr_decay_iters=100"], "must be more than warmup_iters=100"),
])
def test_a_budget_that_cannot_work_is_one_line(tmp_path, flags, message):
    result = run_in_process("train.py", f"--out_dir={tmp_path / 'out'}", *flags)
    assert_clean_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_with_a_budget_stops_when_it_is_spent_with_a_last_evaluation_and_save(tiny_data, tmp_path):
    result = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *TINY_RUN,
                        "--max_minutes=0.05", "--max_iters=1000000", "--eval_interval=1000000", "--log_interval=5")
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert 3.0 <= state["train_seconds"]  # the whole budget was trained, and the time is kept for a resume
    assert 2 < state["step"] < 1000000
    lines = result.stdout.splitlines()
    assert f"eval step {state['step']}:" in result.stdout  # the last evaluation, at the step it stopped
    assert any(" | minute 0.0 of 0.05 | " in line for line in lines if line.startswith("step "))
    assert f"done: {state['step']} steps in 0.05 minutes" in result.stdout


@pytest.mark.slow
def test_a_resumed_run_goes_on_with_the_budget_that_is_left(tiny_data, tmp_path):
    flags = [f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *TINY_RUN, "--eval_interval=1000000"]
    first = run_script("train.py", *flags, "--max_iters=3", "--max_minutes=10")  # stopped by max_iters
    assert first.returncode == 0, first.stderr
    used = load_checkpoint(str(tmp_path / "ckpt.pt"))["train_seconds"]
    assert used > 0
    budget = (used + 2.0) / 60  # two more seconds of training
    resumed = run_script("train.py", *flags, "--max_iters=1000000", f"--max_minutes={budget}", "--init_from=resume")
    assert resumed.returncode == 0, resumed.stderr
    state = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert state["step"] > 3 and state["train_seconds"] >= budget * 60
    spent = run_script("train.py", *flags, "--max_iters=1000000", f"--max_minutes={budget}", "--init_from=resume")
    assert spent.returncode == 0 and "nothing left to train" in spent.stdout, spent.stderr
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == state["step"]


@pytest.mark.slow
def test_every_log_line_says_how_long_is_left_and_the_first_comes_after_one_step(tiny_data, tmp_path):
    result = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *TINY_RUN, "--max_iters=6",
                        "--log_interval=5", "--eval_interval=100")
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in logged] == ["1/6", "5/6"]
    assert all(line.endswith(" left") for line in logged)


@pytest.mark.slow
def test_a_cpu_run_that_would_take_hours_says_so_after_its_first_steps(tiny_data, tmp_path):
    # max_iters so large that even the tiny model needs days: the note comes after step 2, and
    # the run is stopped (SIGINT, as Ctrl-C) once it has been read
    command = [sys.executable, os.path.join(ROOT, "train.py"), f"--data_dir={tiny_data}", f"--out_dir={tmp_path}",
               *TINY_RUN, "--max_iters=100000000", "--eval_interval=100000000", "--device=cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        note = next((line for line in process.stdout if line.startswith("note: at this pace")), None)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        process.kill()
    assert note and " d " in note and "presets/laptop.py" in note and "--max_minutes" in note
    assert os.path.isfile(os.path.join(ROOT, "presets", "laptop.py"))


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_a_pipe_does_not(tiny_data, tmp_path):
    flags = [f"--data_dir={tiny_data}", *TINY_RUN, "--max_iters=4", "--log_interval=2", "--eval_interval=100"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, as a terminal has
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--out_dir={tmp_path / 'tty'}",
                                *flags], stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:  # read the terminal until the process closes it
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=PROCESS_TIMEOUT) == 0, output.decode(errors="replace")
    os.close(leader)
    text = output.decode(errors="replace")
    assert "4/4 [" in text and "step/s" in text  # tqdm's bar, in steps
    assert "step 2/4 | loss" in text  # the log lines still print, above it
    piped = run_script("train.py", f"--out_dir={tmp_path / 'pipe'}", *flags)
    assert piped.returncode == 0 and "step/s" not in piped.stdout + piped.stderr
