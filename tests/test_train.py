"""train.py: the learning-rate schedule, the optimizers (AdamW, or Muon + AdamW), exact resume,
crash-safe checkpoints, signals, the NaN guard."""
import collections
import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import train as train_py  # train() below runs the script
from checkpoint import load_checkpoint
from common import UserError
from conftest import (PROCESS_TIMEOUT, ROOT, TINY_RUN, assert_clean_error, assert_same_optimizer_states, copy_of,
                      run_script)
from model import GPT, GPTConfig
import optimizers as optimizers_module
from checkpoint import resume, rng_state
from optimizers import Float32Muon, get_lr, make_optimizers, set_learning_rates
from train import train_step, training_batch


def train(tiny_data, out_dir, *flags):
    return run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={out_dir}", *TINY_RUN, *flags)


def test_lr_schedule_warms_up_peaks_and_decays_to_min_lr():
    cfg = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110)
    assert get_lr(0, cfg) == pytest.approx(1e-4)  # first step: 1/10 of the peak
    assert get_lr(4, cfg) == pytest.approx(5e-4)
    assert get_lr(10, cfg) == pytest.approx(1e-3)  # peak right after warmup
    assert get_lr(60, cfg) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert get_lr(110, cfg) == pytest.approx(1e-4)
    assert get_lr(500, cfg) == pytest.approx(1e-4)
    lrs = [get_lr(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays, never rises


def test_every_optimizer_follows_the_same_schedule_and_adamw_gets_get_lr_exactly():
    cfg = config.parse_args(["--optimizer=muon", "--learning_rate=3e-3", "--min_lr=3e-4", "--muon_lr=0.05",
                             "--warmup_iters=10", "--lr_decay_iters=110"])
    optimizers = make_optimizers(tiny_model(), cfg, "cpu")
    for step in (0, 4, 10, 37, 60, 110, 500):
        lr = set_learning_rates(optimizers, step, cfg)
        assert lr == get_lr(step, cfg)
        assert all(group["lr"] == lr for group in optimizers["adamw"].param_groups)  # bit for bit
        assert all(group["lr"] == pytest.approx(0.05 * lr / 3e-3) for group in optimizers["muon"].param_groups)


def tiny_model(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
def test_muon_and_adamw_share_the_parameters_each_exactly_once(bias):
    model = tiny_model(bias)
    optimizers = make_optimizers(model, config.parse_args(["--optimizer=muon"]), "cpu")
    assert list(optimizers) == ["muon", "adamw"]
    owner = {}
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            for p in group["params"]:
                assert id(p) not in owner, f"a parameter in both {owner[id(p)]} and {name}"
                owner[id(p)] = name
    named = dict(model.named_parameters())  # the tied LM head / token embedding appears once
    assert set(owner) == {id(p) for p in named.values()}  # none left out
    muon = sorted(n for n, p in named.items() if owner[id(p)] == "muon")
    assert muon == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert owner[id(model.lm_head.weight)] == owner[id(model.transformer.wpe.weight)] == "adamw"
    decayed, plain = optimizers["adamw"].param_groups  # AdamW's groups as today: decay on matrices only
    assert {p.dim() for p in decayed["params"]} == {2} and decayed["weight_decay"] == 0.1
    assert {p.dim() for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0
    only_adamw = make_optimizers(model, config.parse_args([]), "cpu")
    assert list(only_adamw) == ["adamw"]
    assert sum(len(g["params"]) for g in only_adamw["adamw"].param_groups) == len(named)


def muon_steps(optimizer_class, model, gradients):
    """The weights of model's hidden matrices after one optimizer_class step per list of gradients."""
    hidden = model.hidden_matrices()
    optimizer = optimizer_class(hidden, lr=0.02, momentum=0.95, weight_decay=0.1)
    for step_gradients in gradients:
        for p, g in zip(hidden, step_gradients):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in hidden], optimizer


def random_gradients(model, steps):
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=generator) for p in model.hidden_matrices()] for _ in range(steps)]


def test_float32_muon_is_torchs_muon_with_the_orthogonalization_in_float32(monkeypatch):
    gradients = random_gradients(tiny_model(), 3)
    ours, _ = muon_steps(Float32Muon, tiny_model(), gradients)
    # torch's Muon computes in float32 where it would cast to bfloat16: the same operations in
    # the same order, so the same bits (tall and wide matrices, momentum, weight decay, lr scale)
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.float())
    theirs, _ = muon_steps(torch.optim.Muon, tiny_model(), gradients)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_muon_in_bfloat16_and_in_float32_differ_only_by_bfloat16_rounding():
    model = tiny_model()
    before = [p.detach().clone() for p in model.hidden_matrices()]
    gradients = random_gradients(model, 1)
    in_bf16, optimizer = muon_steps(torch.optim.Muon, tiny_model(), gradients)
    in_fp32, _ = muon_steps(Float32Muon, tiny_model(), gradients)
    for a, b, start in zip(in_bf16, in_fp32, before):
        # bfloat16 keeps 8 significant bits: each of the iteration's 15 matrix products rounds by up
        # to 2^-9 (0.2%) of its entries, and the iteration carries those errors on; measured 1.5-1.9%
        # (relative, Frobenius) in these matrices. A wrong update (another transposition, momentum
        # or lr scale) would differ by tens of percent.
        relative = (a - start - (b - start)).norm() / (b - start).norm()
        assert relative < 0.05, relative
    Float32Muon(tiny_model().hidden_matrices()).load_state_dict(optimizer.state_dict())  # checkpoints carry over


@pytest.mark.parametrize("device_type, native, muon_dtype, expected", [
    ("cpu", False, "auto", Float32Muon), ("cpu", True, "auto", torch.optim.Muon),
    ("cuda", True, "auto", torch.optim.Muon), ("cpu", True, "float32", Float32Muon),
    ("cpu", False, "bfloat16", torch.optim.Muon)])
def test_muon_orthogonalizes_in_bfloat16_only_where_the_device_computes_it(monkeypatch, device_type, native, muon_dtype,
                                                                           expected):
    monkeypatch.setattr(optimizers_module, "native_bf16", lambda kind: native)
    optimizers = make_optimizers(tiny_model(), config.parse_args(["--optimizer=muon", f"--muon_dtype={muon_dtype}"]),
                                 device_type)
    assert type(optimizers["muon"]) is expected


def test_muon_on_a_torch_without_it_is_a_clean_error(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(UserError, match="--optimizer=muon needs torch.optim.Muon, new in PyTorch 2.9"):
        make_optimizers(tiny_model(), config.parse_args(["--optimizer=muon"]), "cpu")


def test_muon_trains_a_tiny_model_with_accumulation_and_clipping(tiny_data):
    cfg = config.parse_args([f"--data_dir={tiny_data}", "--optimizer=muon", "--block_size=32", "--batch_size=4",
                             "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=2", "--lr_decay_iters=15",
                             "--max_iters=15"])
    model = tiny_model()
    hidden_before = [p.detach().clone() for p in model.hidden_matrices()]
    optimizers = make_optimizers(model, cfg, "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for step in range(cfg.max_iters):
        set_learning_rates(optimizers, step, cfg)
        next_batch = functools.partial(training_batch, cfg, "cpu", step, 0)
        loss = train_step(model, optimizers, scaler, next_batch, 2, contextlib.nullcontext(), grad_clip=1.0)
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] - 2.0, losses
    assert all(not torch.equal(p, before) for p, before in zip(model.hidden_matrices(), hidden_before))
    assert all("momentum_buffer" in optimizers["muon"].state[p] for p in model.hidden_matrices())


def test_a_checkpoint_from_before_muon_resumes_as_adamw(tiny_data, tmp_path):
    # such a checkpoint holds the AdamW's state alone under "optimizer", and no optimizer in its config
    cfg = config.parse_args([f"--data_dir={tiny_data}", "--block_size=32"])
    model = tiny_model()
    optimizers = make_optimizers(model, cfg, "cpu")
    next_batch = functools.partial(training_batch, cfg, "cpu", 0, 0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(model, optimizers, scaler, next_batch, 1, contextlib.nullcontext(), grad_clip=1.0)
    old_config = {k: v for k, v in vars(cfg).items() if not k.startswith(("optimizer", "muon_"))}
    model_args = dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    checkpoint.save({"model": model.state_dict(), "optimizer": optimizers["adamw"].state_dict(),
                     "scaler": scaler.state_dict(), "model_args": model_args, "config": old_config, "step": 1,
                     "best_val_loss": 9.0, "rng": [rng_state()]}, str(tmp_path / "ckpt.pt"))
    fresh = tiny_model()
    resumed = make_optimizers(fresh, cfg, "cpu")
    step, _, train_seconds, wandb_run_id = resume(str(tmp_path / "ckpt.pt"), fresh, resumed, "adamw", scaler,
                                                  model_args, 0, 1, lambda *args: None)
    assert (step, train_seconds, wandb_run_id) == (1, 0.0, None)  # written before time budgets: none used
    assert all(torch.equal(p, model.state_dict()[name]) for name, p in fresh.state_dict().items())
    saved = {"optimizer": {"adamw": optimizers["adamw"].state_dict()}}
    assert saved["optimizer"]["adamw"]["state"]  # the step's moments are there to compare
    assert_same_optimizer_states({"optimizer": {"adamw": resumed["adamw"].state_dict()}}, saved)
    with pytest.raises(UserError, match="trained with --optimizer=adamw, not --optimizer=muon"):
        resume(str(tmp_path / "ckpt.pt"), tiny_model(), make_optimizers(tiny_model(), cfg, "cpu"), "muon", scaler,
               model_args, 0, 1, lambda *args: None)


def test_resume_reads_the_checkpoint_onto_the_cpu_where_the_random_generators_states_belong(tmp_path, monkeypatch):
    # Found on a GPU: a checkpoint read straight onto the device put the generators' states there,
    # and restoring them failed (numpy and torch.set_rng_state take CPU tensors only). The model
    # and the optimizers copy their tensors to their own device when they load them.
    cfg = config.parse_args(["--block_size=32"])
    model, scaler = tiny_model(), torch.amp.GradScaler("cpu", enabled=False)
    model_args = dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    saved_rng = rng_state()
    optimizer_states = {"adamw": make_optimizers(model, cfg, "cpu")["adamw"].state_dict()}
    checkpoint.save({"model": model.state_dict(), "optimizer": optimizer_states, "scaler": scaler.state_dict(),
                     "model_args": model_args, "config": vars(cfg), "step": 3, "best_val_loss": 9.0,
                     "rng": [saved_rng]}, str(tmp_path / "ckpt.pt"))
    read_onto = []
    real_load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint",
                        lambda path, device="cpu": read_onto.append(device) or real_load(path, device))
    torch.rand(100)  # the generators move on, as a new process's would
    resume(str(tmp_path / "ckpt.pt"), tiny_model(), make_optimizers(tiny_model(), cfg, "cpu"), "adamw", scaler,
           model_args, 0, 1, lambda *args: None)
    assert read_onto == ["cpu"]
    assert torch.equal(torch.get_rng_state(), saved_rng["torch"])


# Every way for Python code to read a tensor back to the host (and, on a GPU, wait for the work
# queued before it), and the collectives train.py calls (each followed by such a read).
HOST_READS = [(torch.Tensor, name) for name in ("item", "tolist", "cpu", "numpy", "__array__", "__bool__",
                                                "__float__", "__int__", "__index__", "__format__")]
HOST_READS += [(torch.distributed, "all_reduce"), (torch.cuda, "synchronize")]


@pytest.mark.parametrize("processes", ["one", "ddp"])
def test_the_loop_waits_for_the_device_only_at_log_eval_and_save_steps(tiny_data, tmp_path, monkeypatch, capsys,
                                                                       processes):
    step_losses, reads = [], collections.Counter()  # reads[n]: reads after the n-th train_step began

    def counted(read):
        def wrapper(*args, **kwargs):
            if os.path.dirname(sys._getframe(1).f_code.co_filename) == ROOT:  # called by the project's code
                reads[len(step_losses)] += 1
            return read(*args, **kwargs)
        return wrapper

    def recorded_train_step(*args):
        step_losses.append(None)
        step_losses[-1] = train_step(*args)
        return step_losses[-1]

    for owner, name in HOST_READS:
        monkeypatch.setattr(owner, name, counted(getattr(owner, name)))
    monkeypatch.setattr(train_py, "train_step", recorded_train_step)
    # the model as a GPU runs it (the CPU's fast paths may read CPU tensors, which waits for nothing)
    monkeypatch.setattr(train_py.cpu_fast_paths, "enable", lambda *args: False)
    if processes == "ddp":  # a process group of one: DDP and the collectives, in this process
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for name, value in dict(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port).items():
            monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(sys, "argv", ["train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *TINY_RUN,
                                      "--max_iters=7", "--log_interval=3", "--eval_interval=1000",
                                      "--checkpoint_interval=1000", "--eval_iters=1", "--gradient_accumulation_steps=1"])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train_py.main()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert len(step_losses) == 7
    # before the first step (evaluation), after the first two (timed for the estimate of the time
    # left, the first one logged), the log steps, the last step
    assert sorted(reads) == [0, 1, 2, 3, 6, 7]
    logged = [line.split("| loss ")[1].split()[0] for line in capsys.readouterr().out.splitlines() if "| loss " in line]
    assert logged == [f"{step_losses[i].item():.4f}" for i in (0, 2, 5)]  # the log step's own loss


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_and_plot(tiny_data, tmp_path):
    result = train(tiny_data, tmp_path, "--max_iters=4", "--eval_interval=2")
    assert result.returncode == 0, result.stderr
    for name in ("ckpt.pt", "best_model_params.pt", "config.json", "metrics.csv", "loss.png"):
        assert (tmp_path / name).is_file(), name
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,tokens,train_loss,val_loss,val_perplexity,val_bits_per_byte")
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "2", "4"]
    assert "tokens/s" in result.stdout and "bits/byte" in result.stdout
    # best_model_params.pt is a plain state_dict, loadable as the seed loaded it
    state = torch.load(tmp_path / "best_model_params.pt", weights_only=True)
    assert "lm_head.weight" in state and "optimizer" not in state
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 4


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_data, tmp_path):
    # dropout: its random state must resume too; Muon's momentum buffers and AdamW's moments (for
    # the embeddings) too. AdamW alone resumes in the kill -9 test below.
    flags = ["--max_iters=6", "--eval_interval=3", "--dropout=0.1", "--optimizer=muon"]
    straight = train(tiny_data, tmp_path / "straight", *flags)
    assert straight.returncode == 0, straight.stderr
    first = train(tiny_data, tmp_path / "split", "--max_iters=3", *flags[1:])
    assert first.returncode == 0, first.stderr
    second = train(tiny_data, tmp_path / "split", "--init_from=resume", *flags)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout
    a = load_checkpoint(str(tmp_path / "straight/ckpt.pt"))
    b = load_checkpoint(str(tmp_path / "split/ckpt.pt"))
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert sorted(a["optimizer"]) == sorted(b["optimizer"]) == ["adamw", "muon"]
    assert_same_optimizer_states(a, b)  # both optimizers' states are in ckpt.pt, and equal
    strip_time = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip_time((tmp_path / "straight/metrics.csv").read_text()) == \
        strip_time((tmp_path / "split/metrics.csv").read_text())
    losses = lambda out: [line.split("| loss ")[1].split(" ")[0] for line in out.splitlines() if "| loss " in line]  # noqa: E731
    assert losses(straight.stdout) == losses(first.stdout) + losses(second.stdout)


def start_training(tiny_data, out_dir, *flags):
    """train.py in the background; its log lines reach the test as they are printed (unbuffered)."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--data_dir={tiny_data}",
                             f"--out_dir={out_dir}", *TINY_RUN, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_step(process, step):
    """Read the training log until the given step is logged."""
    for line in process.stdout:
        if line.startswith(f"step {step}/"):
            return
    raise AssertionError(f"training ended before step {step}: {process.stderr.read()}")


def kill_at_a_random_moment(process, rng):
    """kill -9 `process` at a random moment of its saving-every-step phase; False if it finished first.

    The moment is drawn after two steps are logged (so at least one step's checkpoint is on disk),
    within the next two steps as long as this machine takes for one, however slow or busy it is."""
    logged = []
    for line in process.stdout:
        if line.startswith("step "):
            logged.append(time.monotonic())
            if len(logged) == 2:
                time.sleep(rng.uniform(0, 2 * (logged[1] - logged[0])))
                break
    if process.poll() is not None:
        assert process.wait() == 0, process.stderr.read()
        return False
    process.kill()
    process.wait()
    return True


@pytest.mark.slow
def test_sigterm_and_sigint_save_the_state_and_say_how_to_resume(tiny_data, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        out_dir = tmp_path / sig.name
        process = start_training(tiny_data, out_dir, "--max_iters=1000", "--eval_interval=1000")
        wait_for_step(process, 3)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
        assert process.returncode == 128 + sig, stderr
        assert "--init_from=resume" in stdout and "Traceback" not in stderr
        assert f"{sig.name}: saving ckpt.pt and stopping after this step" in stderr
        assert load_checkpoint(str(out_dir / "ckpt.pt"))["step"] >= 3
    # what it says to do works (the signal's step: both signals save the same way)
    step = load_checkpoint(str(out_dir / "ckpt.pt"))["step"]
    resumed = train(tiny_data, out_dir, "--init_from=resume", f"--max_iters={step + 2}", "--eval_interval=1000")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(str(out_dir / "ckpt.pt"))["step"] == step + 2


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_nan_loss_stops_without_touching_the_best_weights(tiny_data, tmp_path, optimizer):
    assert train(tiny_data, tmp_path, "--max_iters=2", "--eval_interval=1", f"--optimizer={optimizer}").returncode == 0
    best_before = (tmp_path / "best_model_params.pt").read_bytes()
    blown_up = train(tiny_data, tmp_path, "--init_from=resume", "--max_iters=30", "--eval_interval=1",
                     "--learning_rate=1e30", "--min_lr=0", "--warmup_iters=0", "--grad_clip=0",
                     f"--optimizer={optimizer}", "--muon_lr=1e30")
    assert_clean_error(blown_up, "training loss became")
    assert (tmp_path / "best_model_params.pt").read_bytes() == best_before
    state = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.slow
def test_a_nan_between_log_steps_stops_the_run_at_the_next_one_naming_the_step_it_appeared(tiny_data, trained_run,
                                                                                          tmp_path):
    kept = {name: (trained_run / name).read_bytes() for name in ("ckpt.pt", "best_model_params.pt")}
    errors = {}
    for log_interval in (1, 5):  # a check after every step, or only at steps 5, 10, ...
        out_dir = copy_of(trained_run, tmp_path, f"log{log_interval}")
        blown_up = train(tiny_data, out_dir, "--init_from=resume", "--max_iters=30", "--learning_rate=1e30",
                         "--min_lr=0", "--warmup_iters=0", "--grad_clip=0", f"--log_interval={log_interval}",
                         "--eval_interval=1000", "--checkpoint_interval=1000")
        error = assert_clean_error(blown_up, "the training loss became", "stopping without saving")
        errors[log_interval] = error.split(";")[0]  # "error: the training loss became nan at step 3"
        assert {name: (out_dir / name).read_bytes() for name in kept} == kept  # nothing saved
    assert errors[5] == errors[1]  # the same first bad step, found at the next check
    bad_step = int(errors[5].split(" at step ")[1])
    assert (bad_step + 1) % 5 != 0  # between two checks: steps went on after it, unsaved


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tiny_data, tmp_path):
    # big steps (seconds), the first Ctrl-C as step 2 begins and the second as soon as train.py has
    # taken the first: it must land while the first is still waiting for its step to end, not while
    # the process is already exiting (Python has no handler left then, and the signal kills it)
    process = start_training(tiny_data, tmp_path, "--max_iters=1000", "--eval_interval=1000",
                             "--gradient_accumulation_steps=128")
    wait_for_step(process, 1)
    process.send_signal(signal.SIGINT)
    assert any(line.startswith("SIGINT: saving ckpt.pt and stopping after this step") for line in process.stderr)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert "stopped by SIGINT" not in stdout


# ----------------------------------------------------------------------------- never lose a run

@pytest.mark.slow
def test_a_scratch_run_into_an_earlier_run_is_refused_unless_overwrite(tiny_data, trained_run, tmp_path):
    tmp_path = copy_of(trained_run, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "best_model_params.pt", "metrics.csv")}
    error = assert_clean_error(train(tiny_data, tmp_path, "--max_iters=2"), "already holds a run", "ckpt.pt at step 2",
                               "best val loss", "--init_from=resume", "another --out_dir", "--overwrite=true")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    replaced = train(tiny_data, tmp_path, "--max_iters=1", "--eval_interval=1", "--overwrite=true")
    assert replaced.returncode == 0, replaced.stderr
    assert "replacing the earlier run" in replaced.stdout
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 1
    assert [row.split(",")[0] for row in (tmp_path / "metrics.csv").read_text().splitlines()[1:]] == ["0", "1"]
    assert error.count("error:") == 1


@pytest.mark.slow
def test_an_out_dir_with_only_unrelated_files_is_fine(tiny_data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert train(tiny_data, tmp_path, "--max_iters=1").returncode == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_resuming_with_max_iters_already_reached_has_nothing_to_do(tiny_data, trained_run, tmp_path):
    tmp_path = copy_of(trained_run, tmp_path)  # at step 2
    ckpt_before = (tmp_path / "ckpt.pt").read_bytes()
    for max_iters in (1, 2):
        result = train(tiny_data, tmp_path, "--init_from=resume", f"--max_iters={max_iters}")
        assert result.returncode == 0, result.stderr
        assert f"at step 2 and --max_iters={max_iters}: nothing left to train" in result.stdout
        assert "step 3/" not in result.stdout
    assert (tmp_path / "ckpt.pt").read_bytes() == ckpt_before


@pytest.mark.slow
def test_a_second_train_py_on_a_busy_out_dir_is_refused_and_a_killed_runs_lock_is_not_stale(tiny_data, tmp_path):
    first = start_training(tiny_data, tmp_path, "--max_iters=1000", "--eval_interval=1000")
    wait_for_step(first, 1)
    second = train(tiny_data, tmp_path, "--init_from=resume", "--max_iters=5")
    assert_clean_error(second, "is in use by another train.py", f"pid {first.pid},", "choose another --out_dir")
    first.kill()  # kill -9: no chance to clean up
    first.wait()
    resumed = train(tiny_data, tmp_path, "--init_from=resume", f"--max_iters={load_checkpoint(str(tmp_path / 'ckpt.pt'))['step'] + 1}")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_ends_the_run_with_one_line_and_resumes_later(tiny_data, trained_run,
                                                                                          tmp_path):
    tmp_path = copy_of(trained_run, tmp_path)  # at step 2
    ckpt_before = (tmp_path / "ckpt.pt").read_bytes()
    # as on a full disk: no file may grow past 1 MB, and the tiny model's weights are 6 MB
    full = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}", *TINY_RUN, "--init_from=resume",
                      "--max_iters=4", "--eval_interval=1", file_size_limit=1 << 20)
    error = assert_clean_error(full, "cannot write", "File too large", "are intact", "at step 2",
                               "--init_from=resume")
    assert "best_model_params.pt" in error or "ckpt.pt:" in error
    assert (tmp_path / "ckpt.pt").read_bytes() == ckpt_before  # the earlier checkpoint is untouched
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]  # no partial file
    resumed = train(tiny_data, tmp_path, "--init_from=resume", "--max_iters=4", "--eval_interval=1")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 4


@pytest.mark.slow
def test_killed_at_random_moments_the_checkpoints_always_load_and_resuming_equals_an_uninterrupted_run(
        tiny_data, tmp_path):
    # checkpoints and evaluations (best weights) every step or two: a kill most likely lands in a save
    flags = ["--max_iters=40", "--eval_interval=2", "--checkpoint_interval=1", "--dropout=0.1"]
    straight = train(tiny_data, tmp_path / "straight", *flags)
    assert straight.returncode == 0, straight.stderr
    rng, kills, out_dir = random.Random(1), 0, tmp_path / "soak"
    while True:
        resume = ["--init_from=resume"] if (out_dir / "ckpt.pt").exists() else ["--overwrite=true"]
        process = start_training(tiny_data, out_dir, *flags, *resume)
        if kills == 6:  # enough: let it finish (each run before took 2 to 4 steps)
            stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
            assert process.returncode == 0, stderr
            break
        if not kill_at_a_random_moment(process, rng):  # it finished first
            break
        kills += 1
        for name in ("ckpt.pt", "best_model_params.pt"):  # whole files only, whenever the kill came
            assert isinstance(torch.load(out_dir / name, weights_only=True), dict), (kills, name)
    assert kills == 6
    assert not [p for p in os.listdir(out_dir) if p.endswith(".tmp")]  # the resumed runs swept half-written files
    a, b = load_checkpoint(str(tmp_path / "straight/ckpt.pt")), load_checkpoint(str(out_dir / "ckpt.pt"))
    assert a["step"] == b["step"] == 40
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert_same_optimizer_states(a, b)  # AdamW's moments and step counts
    strip_time = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip_time((out_dir / "metrics.csv").read_text()) == strip_time((tmp_path / "straight/metrics.csv").read_text())
