"""The lines of train.py a GPU runs, run on the CPU: the plain model under bf16 autocast and
torch.compile, float16 with a GradScaler, and DDP with compile. (PyTorch's CPU autocast takes
bfloat16 and float16, inductor compiles for the CPU with the system C++ compiler, and
torch.amp.GradScaler("cpu") works as the CUDA one does.)"""
import re

import pytest
import torch

import config
from optimizers import make_optimizers
import train
from checkpoint import load_checkpoint
from common import native_bf16
from conftest import TINY_RUN, run_script
from data import batch_rng, get_batch
from model import GPT, GPTConfig
from test_ddp import FLAGS as DDP_FLAGS, torchrun

FAST_LEARNING = ["--learning_rate=1e-2", "--min_lr=1e-3"]  # a visible fall of the loss within 8 steps
BF16_STEP0_TOLERANCE = 2e-3  # nats: |bf16 - fp32| of the step-0 evaluation loss (measured: about 1e-5)
# relative |bf16 - fp32| of each step's loss, the same weights, batches and learning rates: bf16
# rounds every matmul's inputs to 8 significant bits (2^-9 = 0.2%), which the loss averages over
# thousands of products (1e-5 at step 0) and the updates carry on; 0.5% is a little more than
# bf16's own resolution at the loss (2^-8 = 0.4%). Measured: at most 0.07% over 8 steps. A run off
# by one step of this curve (2-7% a step) or learning at another rate would be off by more.
BF16_CURVE_TOLERANCE = 0.005


EVERY_OPTION = dict(pos_emb="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, bias=False)


def tiny_model(dropout=0.1, **options):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=dropout, **options))


def step_losses(stdout):
    """The training loss of every logged step, in order, from train.py's `step N/M | loss X` lines."""
    return [float(line.split("| loss ")[1].split()[0]) for line in stdout.splitlines() if "| loss " in line]


def eval_losses(stdout):
    """{step: val loss} from train.py's `eval step N: ... val loss X` lines."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"eval step (\d+): .*?val loss ([\d.naif]+)", stdout)}


# ----------------------------------------------------------------------------- compile: no graph breaks

@pytest.mark.parametrize("options", [{}, EVERY_OPTION], ids=["gpt2", "every_model_option"])
def test_compiled_training_and_evaluation_forwards_have_no_graph_breaks(options):
    model = tiny_model(**options).train()
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training = torch._dynamo.explain(model)(x, y)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        evaluation = torch._dynamo.explain(model)(x, y)
    for explained in (training, evaluation):
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


# ----------------------------------------------------------------------------- bf16 autocast + compile

@pytest.mark.slow
def test_bf16_autocast_with_compile_trains_like_float32_and_samples(tiny_data, tmp_path):
    flags = [*TINY_RUN, f"--data_dir={tiny_data}", "--max_iters=8", "--eval_interval=4", "--dropout=0",
             *FAST_LEARNING]
    fp32 = run_script("train.py", *flags, f"--out_dir={tmp_path / 'fp32'}", "--dtype=float32")
    bf16 = run_script("train.py", *flags, f"--out_dir={tmp_path / 'bf16'}", "--dtype=bfloat16", "--compile=true")
    assert fp32.returncode == 0, fp32.stderr
    assert bf16.returncode == 0, bf16.stderr
    assert "bfloat16, compile True" in bf16.stdout
    # one warning where bf16 is emulated (not a word where the CPU has it): float32 is faster there
    warnings = [line for line in bf16.stderr.splitlines() if line.startswith("warning: this CPU has no bfloat16")]
    assert len(warnings) == (0 if native_bf16("cpu") else 1), bf16.stderr
    fp32_losses, bf16_losses = eval_losses(fp32.stdout), eval_losses(bf16.stdout)
    assert sorted(bf16_losses) == sorted(fp32_losses) == [0, 4, 8]
    # same weights at step 0 (same seed): only bf16 rounding separates the two losses
    assert abs(bf16_losses[0] - fp32_losses[0]) < BF16_STEP0_TOLERANCE, (bf16_losses, fp32_losses)
    # and the same batches and learning rates after it: step by step, bf16 follows float32's curve
    fp32_curve, bf16_curve = step_losses(fp32.stdout), step_losses(bf16.stdout)
    assert len(bf16_curve) == len(fp32_curve) == 8
    for step, (a, b) in enumerate(zip(bf16_curve + [bf16_losses[4], bf16_losses[8]],
                                      fp32_curve + [fp32_losses[4], fp32_losses[8]])):
        assert abs(a - b) < BF16_CURVE_TOLERANCE * b, (step, bf16_curve, fp32_curve, bf16_losses, fp32_losses)
    assert bf16_losses[8] < bf16_losses[0] - 0.5, (bf16_losses, fp32_losses)  # finite and falling
    sampled = run_script("sample.py", "--out_dir", tmp_path / "bf16", "--temperature", "0", "--max_new_tokens", "10",
                         "--ignore_eot", "--device", "cpu")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("Once upon a time")
    assert sampled.stdout[len("Once upon a time"):].strip() and "[10 tokens in " in sampled.stderr  # a story


# ----------------------------------------------------------------------------- float16 + GradScaler

def one_step(model, optimizers, scaler, tiny_data):
    batch = lambda micro_step: get_batch(str(tiny_data), "train", 4, 32, batch_rng(0, 0, micro_step), "cpu")  # noqa: E731
    autocast = torch.autocast("cpu", dtype=torch.float16)
    return train.train_step(model, optimizers, scaler, batch, 2, autocast, grad_clip=1.0)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_float16_step_whose_gradients_overflow_is_skipped_and_the_scale_lowered(tiny_data, optimizer):
    model = tiny_model(dropout=0.0)
    optimizers = make_optimizers(model, config.parse_args([f"--optimizer={optimizer}"]), "cpu")
    # 2**100 times the loss: its gradient overflows float16 (largest finite value 65504)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = one_step(model, optimizers, scaler, tiny_data)
    assert torch.isfinite(loss)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # skipped, by every optimizer
    assert scaler.get_scale() == 2.0 ** 99  # lowered (backoff factor 0.5), once for the step
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)  # a scale whose gradients fit
    one_step(model, optimizers, scaler, tiny_data)
    assert scaler.get_scale() == 2.0 ** 8
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == set(before)  # every parameter updated, by Muon or AdamW


@pytest.mark.slow
def test_float16_run_trains_and_overflowing_steps_do_not_trip_the_nan_guard(tiny_data, tmp_path):
    flags = [*TINY_RUN, f"--data_dir={tiny_data}", "--dtype=float16", "--eval_interval=4"]
    trained = run_script("train.py", *flags, f"--out_dir={tmp_path / 'a'}", "--max_iters=8", *FAST_LEARNING)
    assert trained.returncode == 0, trained.stderr
    assert "float16, compile False" in trained.stdout
    losses = eval_losses(trained.stdout)
    assert losses[8] < losses[0] - 0.5
    assert load_checkpoint(str(tmp_path / "a/ckpt.pt"))["scaler"]["scale"] > 0

    # a learning rate that makes every later forward pass overflow float16: the losses are not
    # finite, the scaler skips each step and lowers its scale, and the run still ends normally
    # (in float32 the NaN guard stops the same command: see test_train.py)
    blown_up = run_script("train.py", *flags, f"--out_dir={tmp_path / 'b'}", "--max_iters=6", "--learning_rate=1e30",
                          "--min_lr=0", "--warmup_iters=0", "--grad_clip=0")
    assert blown_up.returncode == 0, blown_up.stderr
    assert "Traceback" not in blown_up.stderr and "error:" not in blown_up.stderr
    step_losses = [line.split("| loss ")[1].split()[0] for line in blown_up.stdout.splitlines() if "| loss " in line]
    assert len(step_losses) == 6 and "nan" in step_losses[1:]
    state = load_checkpoint(str(tmp_path / "b/ckpt.pt"))
    assert state["step"] == 6 and state["scaler"]["scale"] < 2.0 ** 16  # torch's initial scale, lowered


# ----------------------------------------------------------------------------- DDP + compile

@pytest.mark.slow
def test_two_gloo_processes_with_compile_match_one_plain_process(tiny_data, tmp_path):
    ddp = torchrun(f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'ddp'}", *DDP_FLAGS, "--max_iters=2",
                   "--compile=true")
    assert ddp.returncode == 0, ddp.stderr
    assert "compile True, 2 process(es)" in ddp.stdout
    single = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'single'}", *DDP_FLAGS,
                        "--max_iters=2")
    assert single.returncode == 0, single.stderr
    ddp_state = load_checkpoint(str(tmp_path / "ddp/ckpt.pt"))
    single_state = load_checkpoint(str(tmp_path / "single/ckpt.pt"))
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in ddp_state["model"])  # saved as the plain model
    worst = max((ddp_state["model"][k] - v).abs().max().item() for k, v in single_state["model"].items())
    assert worst < 1e-4  # inductor's fused kernels round differently from eager ops
