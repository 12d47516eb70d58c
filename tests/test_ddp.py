"""Data-parallel training with torchrun (gloo on CPU) matches a single process with the same global batch;
how train.py joins the process group."""
import contextlib
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

import config
import cpu_fast_paths
import train
from checkpoint import load_checkpoint, load_model
from common import UserError
from conftest import PROCESS_TIMEOUT, ROOT, TINY_MODEL, assert_clean_error, run_script

# 2 ranks x 2 micro-batches = 1 process x 4 micro-batches; no dropout, so the only difference
# left is the order in which gradients are summed. Muon orthogonalizes in float32: in bfloat16
# (torch.optim.Muon, --muon_dtype=auto on a GPU) a gradient that differs in its last float32 bit can
# round to the neighbouring bf16 value, which the Newton-Schulz iteration spreads over the matrix
# (5e-5 on one CPU, 2e-3 on another: as large as the error this test looks for). Each process
# orthogonalizes the all-reduced gradients itself, so the dtype changes how closely the runs can
# agree, not what DDP does.
# CPU processes also where TEST_DEVICE=cuda: two GPU processes need two GPUs.
FLAGS = TINY_MODEL + ["--device=cpu", "--batch_size=4", "--gradient_accumulation_steps=4", "--eval_iters=2",
                      "--log_interval=1", "--warmup_iters=2", "--lr_decay_iters=20", "--dropout=0",
                      "--eval_interval=2", "--muon_dtype=float32"]
# max |difference| of any weight after 4 steps. All float32, and the gradients differ only in the
# order of one sum (~1e-7 relative); AdamW and Muon normalize their updates, which can magnify that
# in a tiny gradient component, but not to 1e-5 in 4 steps of lr <= 1e-3 (AdamW) and 0.02 (Muon).
# Measured: 2e-7 (AdamW), 4e-7 (Muon). A rank that trained on other data, or missed the all-reduce,
# would be off by a whole step: ~1e-3.
TOLERANCE = 1e-5


def torchrun_command(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(ROOT, "train.py"), *map(str, args)]


def torchrun(*args):
    return subprocess.run(torchrun_command(*args), capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_gloo_processes_train_as_one_and_log_the_mean_of_their_evaluations(tiny_data, tmp_path, optimizer):
    # (resuming under torchrun: the signal test below resumes bit-exactly)
    flags = [*FLAGS, f"--optimizer={optimizer}"]
    ddp = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'ddp'}", *flags, "--max_iters=4")
    assert ddp.returncode == 0, ddp.stderr
    assert "2 process(es)" in ddp.stdout
    single = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'single'}", *flags,
                        "--max_iters=4")
    assert single.returncode == 0, single.stderr

    ddp_state = load_checkpoint(str(tmp_path / "ddp/ckpt.pt"))
    single_state = load_checkpoint(str(tmp_path / "single/ckpt.pt"))
    assert ddp_state["step"] == single_state["step"] == 4
    assert len(ddp_state["rng"]) == 2  # each rank's random state is kept for resuming
    worst = max((ddp_state["model"][k] - v).abs().max().item() for k, v in single_state["model"].items())
    assert worst < TOLERANCE, worst

    # the loss went down, and only rank 0 logged and wrote metrics (one row per evaluation)
    losses = [float(line.split("| loss ")[1].split()[0]) for line in ddp.stdout.splitlines() if "| loss " in line]
    assert len(losses) == 4 and losses[-1] < losses[0]
    with open(tmp_path / "ddp/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["0", "2", "4"]

    # each rank estimated the losses on batches of its own, and the metrics hold the ranks' mean:
    # rank 0's and rank 1's estimates, made here with the weights of the last evaluation (step 4)
    model = load_model(str(tmp_path / "ddp/ckpt.pt"))
    cpu_fast_paths.enable(model, "cpu")  # as train.py runs the model on a CPU
    cfg = config.parse_args([f"--data_dir={tiny_data}", *flags])
    ranks = [train.estimate_loss(model, cfg, rank, 1, "cpu", contextlib.nullcontext()) for rank in (0, 1)]
    for split, column in (("train", "train_loss"), ("validation", "val_loss")):
        mean = (ranks[0][split] + ranks[1][split]) / 2
        # float32 losses of ~10 nats (1e-6 between neighbouring values), rounded to 6 decimals in
        # metrics.csv: a few of those steps apart at most (measured: equal to the printed digit)
        assert float(rows[-1][column]) == pytest.approx(mean, abs=1e-5), (split, ranks)
        assert abs(ranks[0][split] - ranks[1][split]) > 1e-3, (split, ranks)  # one rank's own estimate would show


@pytest.mark.slow
def test_accumulation_steps_must_split_evenly_across_processes(tiny_data, tmp_path):
    result = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *FLAGS, "--gradient_accumulation_steps=3",
                      "--max_iters=1")
    assert result.returncode != 0
    assert "error: gradient_accumulation_steps=3 must be divisible by the number of processes (2)" in result.stderr
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.mark.slow
def test_an_out_dir_in_use_by_a_torchrun_job_is_refused_naming_its_rank_0(tiny_data, tmp_path):
    job = subprocess.Popen(torchrun_command(f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *FLAGS,
                                            "--max_iters=1000", "--eval_interval=1000"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in job.stdout:
            if line.startswith("step 1/"):
                break
        second = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *FLAGS, "--max_iters=1")
        error = assert_clean_error(second, "is in use by another train.py (pid ")
        owner = int(error.split("(pid ")[1].split(",")[0])
        with open(f"/proc/{owner}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{owner}/environ", "rb") as f:
            environment = f.read().split(b"\0")
        assert parent == job.pid and b"RANK=0" in environment  # the worker torchrun started as rank 0
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=PROCESS_TIMEOUT)


def worker_pid(job, rank):
    """The pid of the worker that torchrun (the process `job`) started as `rank`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environment = f.read().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if parent == job.pid and f"RANK={rank}".encode() in environment:
            return int(pid)
    raise AssertionError(f"torchrun has no worker of rank {rank}")


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_resume_is_bit_exact(tiny_data, tmp_path):
    # the ranks agree on stopping only at log, eval and checkpoint steps: here every 3rd step
    flags = [*FLAGS, "--log_interval=3", "--eval_interval=1000", "--checkpoint_interval=1000", "--dropout=0.1"]
    job = subprocess.Popen(torchrun_command(f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'split'}", *flags,
                                            "--max_iters=1000"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        for line in job.stdout:
            if line.startswith("step 3/"):
                break
        os.kill(worker_pid(job, 1), signal.SIGTERM)  # rank 1 alone, as if its machine were preempted
        stdout, stderr = job.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        job.kill()
    # (torchrun itself reports the workers' exit status 143 with a traceback of its own)
    assert 'train.py", line' not in stderr, stderr  # no traceback from a worker
    stopped = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM after step ")]
    assert len(stopped) == 1, stdout + stderr  # rank 0 stopped too (and only rank 0 logs)
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert step % 3 == 0 and step >= 6  # at a log step after the signal, with both ranks' state saved
    ckpt = load_checkpoint(str(tmp_path / "split/ckpt.pt"))
    assert ckpt["step"] == step and len(ckpt["rng"]) == 2

    resumed = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'split'}", *flags,
                       f"--max_iters={step + 3}", "--init_from=resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'straight'}", *flags,
                        f"--max_iters={step + 3}")
    assert straight.returncode == 0, straight.stderr
    a, b = load_checkpoint(str(tmp_path / "split/ckpt.pt")), load_checkpoint(str(tmp_path / "straight/ckpt.pt"))
    assert a["step"] == b["step"] == step + 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
def test_with_a_time_budget_both_ranks_stop_at_the_same_step(tiny_data, tmp_path):
    # a rank that stopped alone would leave the other waiting in an all-reduce until the timeout
    result = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *FLAGS, "--max_iters=1000000",
                      "--max_minutes=0.05", "--eval_interval=1000000", "--log_interval=5")
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert f"done: {state['step']} steps in 0.05 minutes" in result.stdout and state["train_seconds"] >= 3.0


def read_clocks(rank, port, seconds, readings):
    """One of two gloo processes: a training clock that measured `seconds` since its start."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    clock = train.TrainingClock(0, 0.0, 1.0)
    clock.unread = seconds
    clock.read(10, "cpu")
    readings[rank] = (clock.at(10), clock.at(15))
    torch.distributed.destroy_process_group()


def test_every_rank_reads_rank_0s_training_clock():
    # the learning rate follows the clock under a budget: ranks that read their own clocks would
    # step with different learning rates, and their weights would drift apart unnoticed
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    readings = mp.Manager().dict()
    processes = [mp.get_context("spawn").Process(target=read_clocks, args=(rank, port, seconds, readings))
                 for rank, seconds in ((0, 10.0), (1, 20.0))]
    for process in processes:
        process.start()
    for process in processes:
        process.join(PROCESS_TIMEOUT)
    assert [process.exitcode for process in processes] == [0, 0]
    assert readings[0] == readings[1] == (10.0, 15.0)  # rank 0's 10 s, and on at its 1 s a step


# ----------------------------------------------------------------------------- joining the process group

@pytest.fixture
def under_torchrun(monkeypatch):
    """train.setup_distributed as the second of two processes on a machine with one GPU sees it;
    the backend train.py asks for is recorded instead of a process group made."""
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    backends = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: backends.append(backend))
    return backends


def test_cpu_processes_join_over_gloo_even_where_there_is_a_gpu(under_torchrun):
    assert train.setup_distributed("cpu") == (1, 1, 2, "cpu")
    assert under_torchrun == ["gloo"]


def test_more_gpu_processes_than_gpus_is_a_clean_error_naming_the_process_count_to_use(under_torchrun):
    # found on a one-GPU machine: torch.cuda.set_device(1) failed with "invalid device ordinal"
    with pytest.raises(UserError, match=r"more processes on this machine than it has GPUs \(1\).*--nproc_per_node=1"):
        train.setup_distributed("cuda")
    assert under_torchrun == []


def test_each_gpu_process_takes_its_own_gpu_over_nccl(under_torchrun, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert train.setup_distributed("auto") == (1, 1, 2, "cuda:1")
    assert under_torchrun == ["nccl"]
