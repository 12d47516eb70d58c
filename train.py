"""Train the GPT on the token files written by prepare.py.

    python train.py                                   # one GPU, or CPU/MPS, with config.py's defaults
    python train.py presets/gpu.py --max_iters=2000   # a preset, then flags (later ones win)
    python train.py --init_from=resume                # continue out_dir/ckpt.pt exactly where it stopped
    python train.py presets/finetune.py --init_from=out-stories --data_dir=data_mine   # fine-tune trained weights
    torchrun --standalone --nproc_per_node=8 train.py # data-parallel over 8 GPUs

Every knob is in config.py. Outputs in out_dir: ckpt.pt (the latest full state, for resuming),
best_model_params.pt (the weights with the best validation loss, a plain state_dict),
config.json (the run's configuration), metrics.csv and loss.png.

Reading order: main() at the bottom sets up and runs the loop; the functions above it are its
steps (a batch, one optimizer step, reading its results back, evaluation, the architecture and
data of a run, the training clock, stopping and logging). The optimizers and their schedule are
in optimizers.py; saving, resuming and the run folder's files in checkpoint.py.
"""
import contextlib
import functools
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import checkpoint
import config
import cpu_fast_paths
import gpu_fast_paths
import tokenizer
from optimizers import get_lr, make_optimizers, set_learning_rates
from common import (UserError, explain_compile_failures, make_output_dir, remove_stale_temp_files, resolve_device,
                    resolve_dtype, run_main, warn_if_bf16_is_emulated)
from data import batch_rng, eval_rng, get_batch, load_meta
from model import GPT, GPTConfig

# Dense bf16 tensor-core peak, TFLOP/s, for the MFU column of the log (datasheet figures).
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "L4": 121,
                    "RTX 4090": 165, "RTX 3090": 71}


# ----------------------------------------------------------------------------- setup

def setup_distributed(device_name):
    """(rank, local_rank, world_size, device). Under torchrun, joins the process group: NCCL
    between GPUs, one process per GPU; gloo between CPU processes (--device=cpu), GPU or not."""
    if "RANK" not in os.environ:
        return 0, 0, 1, resolve_device(device_name)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = resolve_device(device_name, local_rank, distributed=True)
    backend = "gloo"
    if device.startswith("cuda"):
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(f"torchrun started more processes on this machine than it has GPUs ({gpus}): one "
                            f"process per GPU, so use --nproc_per_node={gpus} (or --device=cpu for CPU processes)")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    torch.distributed.init_process_group(backend=backend)
    return rank, local_rank, world_size, device


def finish_distributed():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # leave together: no rank tears down while another still talks
        torch.distributed.destroy_process_group()


def all_mean(value, world_size, device):
    """Mean of a float over all processes (the value itself in a single process)."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / world_size


# ----------------------------------------------------------------------------- batches

def scratch_model_args(cfg, vocab_size):
    """The GPTConfig fields of a run from random weights (saved as model_args, compared on resume):
    each from the config knob of the same name, the vocabulary from the data. A fine-tune's come
    from its source (checkpoint.fine_tune_model_args)."""
    names = [name for name in checkpoint.GPT_DEFAULTS if name != "vocab_size"]
    return {**{name: getattr(cfg, name) for name in names}, "vocab_size": vocab_size}


def training_batch(cfg, device, step, first_micro_batch, micro_step):
    """Micro-batch `micro_step` of optimizer step `step`, for the rank whose micro-batches start at first_micro_batch."""
    rng = batch_rng(cfg.seed, step, first_micro_batch + micro_step)
    return get_batch(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, rng, device)


# ----------------------------------------------------------------------------- one optimizer step

def train_step(model, optimizers, scaler, next_batch, accum_steps, autocast, grad_clip):
    """Forward and backward over accum_steps micro-batches (next_batch(i) gives the i-th), then
    clip the gradients and update the weights with each of `optimizers` ({name: optimizer}).
    Returns the step's mean loss as a tensor, left on the device so that the GPU can run ahead.

    With float16 the scaler multiplies the loss so that small gradients survive, and skips the
    update (lowering its scale) when the gradients overflowed; otherwise it does nothing. With
    two optimizers it decides for each by its own gradients (PyTorch's rule for several
    optimizers), so in the rare step where only some gradients overflowed, one may step alone.
    """
    step_loss = 0.0
    for micro_step in range(accum_steps):
        x, y = next_batch(micro_step)
        # under DDP, all-reduce the gradients only once, after the last micro-batch
        last = micro_step == accum_steps - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                _, loss = model(x, y)
            loss = loss / accum_steps  # the sum over micro-steps is the mean over the batch
            scaler.scale(loss).backward()
        step_loss += loss.detach()
    if grad_clip > 0:
        for optimizer in optimizers.values():
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers.values():
        scaler.step(optimizer)
    scaler.update()  # once per step, after every optimizer
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    return step_loss


# ----------------------------------------------------------------------------- reading results back from the device

def is_sync_step(step, cfg):
    """Whether the loop waits for the device after optimizer step number `step` (counted from 1):
    at log, eval and checkpoint steps and the last one. Reading a result back (`.item()`, an
    all-reduce of a flag) waits for the step to finish; at every other step the CPU goes on to
    queue the next one while the GPU still computes this one."""
    return step >= cfg.max_iters or any(step % n == 0 for n in (cfg.log_interval, cfg.eval_interval,
                                                                 cfg.checkpoint_interval))


def check_losses(step_losses, step, world_size, scaler, out_dir):
    """The training losses of the steps before `step` since the last check, kept on the device
    until now and read back at once: each step's mean over all processes, as floats.

    The NaN guard: a loss that is not finite stops the run, naming the first such step, before
    anything is saved (every save comes after a check); every rank reaches the same verdict. Under
    float16 the scaler skips such steps itself, and training goes on.
    """
    losses = torch.stack(step_losses).double()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(losses)
        losses /= world_size
    losses = losses.tolist()
    for bad_step, loss in enumerate(losses, start=step - len(losses)):
        if not math.isfinite(loss) and not scaler.is_enabled():
            raise UserError(f"the training loss became {loss} at step {bad_step}; stopping without saving "
                            f"(the best weights in {out_dir} are untouched). Lower --learning_rate or try "
                            "--dtype=float32, then --init_from=resume")
    return losses


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def estimate_loss(model, cfg, rank, world_size, device, autocast):
    """Mean loss over eval_iters batches per split, the same batches at every evaluation."""
    model.eval()
    losses = {}
    for split_index, split in enumerate(("train", "validation")):
        rng = eval_rng(cfg.seed, split_index, rank)
        total = 0.0
        for _ in range(cfg.eval_iters):
            x, y = get_batch(cfg.data_dir, split, cfg.batch_size, cfg.block_size, rng, device)
            with autocast:
                _, loss = model(x, y)
            total += loss.item()
        losses[split] = all_mean(total / cfg.eval_iters, world_size, device)
    model.train()
    return losses


# ----------------------------------------------------------------------------- fine-tuning: starting from trained weights

def model_args_and_data(cfg, given, architecture, init, log):
    """(model_args, the data's meta.json). From scratch the architecture is config.py's and the
    flags'; a fine-tune (or a resumed one) takes its source's, and the data's vocabulary must fit it.
    Weights trained before (resumed, or fine-tuned) need data of the tokenizer they were trained with."""
    model_args = checkpoint.fine_tune_model_args(cfg, given, architecture, init["source"]) if init else None
    meta = load_meta(cfg.data_dir, model_args["block_size"] if init else cfg.block_size)
    weights = os.path.join(cfg.out_dir, "ckpt.pt") if cfg.init_from == "resume" else init and init["file"]
    if weights:
        tokenizer.check_data_for(weights, cfg.data_dir, meta, f"the weights of --init_from={cfg.init_from}")
    else:
        tokenizer.check_file(cfg.data_dir, tokenizer.record_of(meta), f"the data in {cfg.data_dir}")
    if init is None:
        return scratch_model_args(cfg, meta["vocab_size"]), meta
    if meta["vocab_size"] > model_args["vocab_size"]:
        raise UserError(f"the data's vocabulary ({meta['vocab_size']} tokens, {cfg.data_dir}/meta.json) does not "
                        f"fit the model's ({model_args['vocab_size']} tokens, {init['source']}); prepare the data "
                        "with the model's tokenizer, or start from a model with the data's vocabulary")
    log(f"{'started' if cfg.init_from == 'resume' else 'starting'} from the weights of {init['source']} "
        f"({init['file']}, sha256 {init['sha256'][:16]}...): architecture from them, "
        + ", ".join(f"{k}={model_args[k]}" for k in ("n_layer", "n_head", "n_embd", "bias", "vocab_size"))
        + f", block_size={model_args['block_size']} of its {architecture['block_size']} positions")
    return model_args, meta


# ----------------------------------------------------------------------------- stopping and logging

class StopRequest:
    """Turns SIGINT / SIGTERM into a request to stop: training saves and stops at the next step
    where agree() runs (the next step in a single process; the next log, eval or checkpoint step
    under DDP, where the ranks already wait for each other)."""

    def __init__(self, announce):
        self.signum = None  # the signal this process got; the handler sets it at any moment
        self.agreed = None  # the signal every process stops for; only agree() sets it
        self.announce = announce  # say on stderr that the signal was taken (rank 0)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:  # os.write: a print here could land inside another print and break it
            os.write(2, f"{signal.Signals(signum).name}: saving ckpt.pt and stopping after this step (under "
                        "torchrun: after the next log step); a second one stops at once, without saving\n".encode())

    def agree(self, device):
        """Stop every process if any was asked to: under DDP all must stop at the same step, so
        every rank calls this at the same steps (it all-reduces a flag)."""
        signum = self.signum or 0
        if torch.distributed.is_initialized():
            flag = torch.tensor([signum], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        self.agreed = signum or None


class TrainingClock:
    """The seconds spent training: optimizer steps only, not start-up, evaluation or saving. With
    --max_minutes the schedule follows the fraction of the budget used (schedule_position) and
    the run stops when it is spent.

    The clock is read (read()) only where the loop already waits for the device, so a GPU that
    runs ahead is counted when it catches up; between readings it moves on by the last measured
    time per step (at()). Under DDP rank 0's reading is every rank's, so all compute the same
    learning rates and stop at the same step.
    """

    def __init__(self, step, used_seconds, budget_minutes):
        self.budget = budget_minutes * 60  # 0: no budget
        self.read_step, self.read_seconds = step, used_seconds  # the last reading
        self.seconds_per_step = 0.0  # unknown until the first reading
        self.unread = 0.0  # this process's training seconds since the last reading
        self.started = None

    def start(self):
        self.started = time.time()

    def pause(self):
        self.unread += time.time() - self.started

    def read(self, step, device):
        """Take a reading at `step`; every rank calls it at the same steps."""
        unread = self.unread
        if torch.distributed.is_initialized():
            shared = torch.tensor([unread], dtype=torch.float64, device=device)
            torch.distributed.broadcast(shared, src=0)
            unread = shared.item()
        if step > self.read_step:
            self.seconds_per_step = unread / (step - self.read_step)
        self.read_step, self.read_seconds, self.unread = step, self.read_seconds + unread, 0.0

    def at(self, step):
        """The training seconds used by the end of optimizer step `step`: measured at the last
        reading, extrapolated beyond it."""
        return self.read_seconds + (step - self.read_step) * self.seconds_per_step

    def out_of_time(self, step):
        return bool(self.budget) and self.at(step) >= self.budget

    def schedule_position(self, step, cfg):
        """Where get_lr is in its schedule at `step`: the step itself, or with a budget the same
        fraction of lr_decay_iters as the fraction of the budget used."""
        return min(self.at(step) / self.budget, 1.0) * cfg.lr_decay_iters if self.budget else step

    def seconds_left(self, step, cfg, eval_seconds):
        """Wall-clock seconds to the end of the run: the training left (the steps to max_iters at
        the measured pace, or the budget left if sooner) and the evaluations on the way."""
        training = (cfg.max_iters - step) * self.seconds_per_step
        if self.budget:
            training = max(0.0, min(training, self.budget - self.at(step)))
        last_step = step + (training / self.seconds_per_step if self.seconds_per_step else 0)
        evaluations = int(last_step // cfg.eval_interval - step // cfg.eval_interval)
        evaluations += bool(last_step % cfg.eval_interval)  # the last step's own
        return training + evaluations * eval_seconds


def duration(seconds):
    """'2 d 3 h', '3 h 12 min', '12 min', '40 s': as precise as a person reading a log wants."""
    seconds = max(0, round(seconds))
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{seconds} s"


def progress_bar(cfg, step, clock):
    """A progress bar for a terminal: minutes of the budget, or steps; log lines print above it."""
    if clock.budget:
        return tqdm(total=cfg.max_minutes, initial=clock.at(step) / 60, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| minute {n:.1f} of {total:g} [{elapsed}<{remaining}]")
    return tqdm(total=cfg.max_iters, initial=step, unit="step", dynamic_ncols=True)


def warn_if_too_long_for_a_cpu(seconds_left, log):
    """config.py's defaults are sized for a GPU: on a CPU they take weeks. Say so after the first
    steps, not at the end, and name what fits a laptop."""
    if seconds_left > 3 * 3600:
        log(f"note: at this pace the run needs about {duration(seconds_left)} more on this CPU. For stories on a "
            "laptop train presets/laptop.py (its first lines say how to prepare its data), or give any run a time "
            "budget with --max_minutes=N")


def throughput(model, steps, tokens_per_step, seconds, device_type, world_size):
    """{'tokens_per_s', 'tflops', 'mfu'}; MFU (a fraction) only on a GPU whose bf16 peak is known."""
    tokens_per_s = steps * tokens_per_step / seconds
    flops = model.flops_per_token() * tokens_per_s
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items()
                 if device_type == "cuda" and k in torch.cuda.get_device_name()), None)
    return {"tokens_per_s": tokens_per_s, "tflops": flops / 1e12,
            "mfu": flops / (peak * 1e12 * world_size) if peak else None}


def import_wandb():
    """The wandb module, imported only when a run asks for it: it is an optional dependency."""
    try:
        import wandb
    except ImportError as e:
        raise UserError("--wandb_log=true needs the wandb package: install it with `pip install wandb`, "
                        "or run without --wandb_log") from e
    return wandb


def start_wandb(wandb, cfg, run_id, init):
    """The run's Weights & Biases log: a new W&B run, or with the id saved in ckpt.pt the same one
    continued. Its config is the run's, with a fine-tune's source (init: path, file and sha256).
    Its files go into out_dir/wandb (WANDB_MODE=offline keeps them there only)."""
    return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None, config={**vars(cfg), "init": init},
                      id=run_id, resume="allow" if run_id else None, dir=cfg.out_dir)


# ----------------------------------------------------------------------------- main

def main():
    given = set()  # the knobs set by a flag or preset, not by default
    cfg = config.parse_args(sys.argv[1:], given)
    rank, local_rank, world_size, device = setup_distributed(cfg.device)
    master = rank == 0
    log = tqdm.write if master else (lambda *args, **kwargs: None)  # tqdm.write: above a progress bar, if any
    wandb = import_wandb() if cfg.wandb_log and master else None
    device_type = device.split(":")[0]
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.bfloat16 and master:
        warn_if_bf16_is_emulated(device_type)
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be divisible by "
                        f"the number of processes ({world_size}) to keep the global batch")
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    best_path = os.path.join(cfg.out_dir, "best_model_params.pt")
    # a fine-tune starts from trained weights, and a resumed one keeps the architecture it started with
    fine_tune = cfg.init_from not in ("scratch", "resume")
    source_weights, architecture, init = checkpoint.load_fine_tune_source(cfg) if fine_tune else (None, None, None)
    if cfg.init_from == "resume":
        architecture, init = checkpoint.fine_tune_record(ckpt_path) or (None, None)

    model_args, meta = model_args_and_data(cfg, given, architecture, init, log)
    vars(cfg).update({k: v for k, v in model_args.items() if k != "vocab_size"})  # a fine-tune's shape is its source's
    if device_type == "cuda" and "batch_size" not in given:  # config.py's micro-batch is a CPU's
        memory = torch.cuda.get_device_properties(device).total_memory
        cfg.batch_size, cfg.gradient_accumulation_steps = config.gpu_micro_batch(cfg, model_args["vocab_size"],
                                                                                  world_size, memory)
        log(f"micro-batch {cfg.batch_size} x {cfg.block_size}, {cfg.gradient_accumulation_steps // world_size} per "
            f"process and step: chosen for the {memory / 2**30:.0f} GiB of {torch.cuda.get_device_name(device)} "
            "(--batch_size sets it)")
    accum_steps = cfg.gradient_accumulation_steps // world_size

    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    make_output_dir(cfg.out_dir, "--out_dir")  # the first thing written: bad input above leaves no trace
    lock = checkpoint.lock_out_dir(cfg.out_dir) if master else None  # held until the run ends
    if cfg.init_from != "resume" and master:
        checkpoint.refuse_or_clear_earlier_run(cfg, log)

    # the model, the optimizer and (for float16) the gradient scaler
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    raw_model = GPT(GPTConfig(**model_args)).to(device)
    if source_weights is not None:
        checkpoint.load_fine_tune_weights(raw_model, source_weights, init["source"])
    use_compile = cfg.compile == "true" or (cfg.compile == "auto" and device_type == "cuda")
    cpu_fast_paths.enable(raw_model, device, dtype, use_compile)  # only where it is faster: eager fp32 on a CPU
    gpu_fast_paths.enable(raw_model, device)  # on a GPU: the loss without the full logits
    optimizers = make_optimizers(raw_model, cfg, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    for seed_rng in (torch.manual_seed, random.seed, np.random.seed):
        seed_rng(cfg.seed + rank)  # after the init: each rank its own dropout masks
    step, best_val_loss, train_seconds, wandb_run_id = 0, float("inf"), 0.0, None
    if cfg.init_from == "resume":
        step, best_val_loss, train_seconds, wandb_run_id = checkpoint.resume(
            ckpt_path, raw_model, optimizers, cfg.optimizer, scaler, model_args, rank, world_size, log)
    resumed_at = step if cfg.init_from == "resume" else None
    clock = TrainingClock(step, train_seconds, cfg.max_minutes)  # a resumed budget goes on where it stopped
    if resumed_at is not None and (step >= cfg.max_iters or clock.out_of_time(step)):
        spent = f"--max_iters={cfg.max_iters}" if step >= cfg.max_iters else \
            f"{train_seconds / 60:.1f} minutes of --max_minutes={cfg.max_minutes:g} used"
        log(f"{ckpt_path} is at step {step} and {spent}: nothing left to train "
            "(raise --max_iters or --max_minutes to train further)")
        finish_distributed()
        return

    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    autocast = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type, dtype=dtype)
    eval_model = model = torch.compile(raw_model) if use_compile else raw_model  # eval_model: without DDP
    if torch.distributed.is_initialized():
        model = DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)
    rows = checkpoint.read_metrics(cfg.out_dir, step) if master and resumed_at is not None else []
    if master:
        remove_stale_temp_files(cfg.out_dir)
        checkpoint.write_run_config(cfg, model_args, world_size, init, tokenizer.record_of(meta))
    log(f"model: {raw_model.num_params() / 1e6:.2f}M parameters | device {device}, {str(dtype)[6:]}, "
        f"compile {use_compile}, {world_size} process(es) | {tokens_per_step:,} tokens per step | "
        f"optimizer {cfg.optimizer}")
    if cfg.max_minutes:
        log(f"time budget: {cfg.max_minutes:g} minutes of training (not start-up or evaluation), the schedule spread "
            f"over them, at most {cfg.max_iters:,} steps (how many depends on the machine: not bit-reproducible)")

    stop = StopRequest(announce=master)
    step_losses = []  # the training losses since the last check, on the device
    saved_step = resumed_at  # the step whose state ckpt.pt on disk holds
    start_time = last_log_time = time.time()
    last_log_step = first_step = step
    eval_seconds = 0.0  # the last evaluation's, for the estimate of the time left
    bar = progress_bar(cfg, step, clock) if master and sys.stderr.isatty() else None  # tqdm draws on stderr
    tracker = start_wandb(wandb, cfg, wandb_run_id, init) if wandb else None
    save = functools.partial(checkpoint.save_checkpoint, ckpt_path, raw_model, optimizers, scaler, model_args, cfg,
                             world_size=world_size, wandb_run_id=tracker.id if tracker else wandb_run_id, init=init)
    with checkpoint.explain_write_failures(cfg.out_dir), explain_compile_failures(use_compile, "run with --compile=false"):
        while True:
            # evaluate, keep the best weights, save the latest state
            finished = step >= cfg.max_iters or clock.out_of_time(step)
            if (step % cfg.eval_interval == 0 or finished) and step != resumed_at:
                eval_started = time.time()
                losses = estimate_loss(eval_model, cfg, rank, world_size, device, autocast)
                row = checkpoint.metrics_row(step, losses, get_lr(clock.schedule_position(step, cfg), cfg),
                                             tokens_per_step, meta["splits"]["validation"], time.time() - start_time)
                log(f"eval step {step}: train loss {losses['train']:.4f} | val loss {row['val_loss']:.4f}, "
                    f"perplexity {row['val_perplexity']:.2f}, {row['val_bits_per_byte']:.4f} bits/byte")
                if master:
                    rows.append(row)
                    checkpoint.write_metrics(cfg.out_dir, rows)
                if tracker:
                    tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
                if losses["validation"] < best_val_loss:
                    best_val_loss = losses["validation"]
                    if master:
                        checkpoint.save(raw_model.state_dict(), best_path)
                    save(step=step, best_val_loss=best_val_loss, train_seconds=clock.at(step))
                    saved_step = step
                    log(f"  new best val loss; saved {best_path} and ckpt.pt")
                eval_seconds = time.time() - eval_started
                last_log_time, last_log_step = time.time(), step  # keep evaluation out of tokens/s
            if finished or stop.agreed is not None:
                if saved_step != step:
                    save(step=step, best_val_loss=best_val_loss, train_seconds=clock.at(step))
                break
            if step % cfg.checkpoint_interval == 0 and step > 0 and saved_step != step:
                save(step=step, best_val_loss=best_val_loss, train_seconds=clock.at(step))
                saved_step = step

            # one optimizer step, at this step's learning rates; its loss stays on the device
            clock.start()
            lr = set_learning_rates(optimizers, clock.schedule_position(step, cfg), cfg)
            next_batch = functools.partial(training_batch, cfg, device, step, rank * accum_steps)
            step_losses.append(train_step(model, optimizers, scaler, next_batch, accum_steps, autocast, cfg.grad_clip))
            step += 1

            # wait for the device only before a log, eval or save (and at the first two steps, to
            # time one): check the losses, agree on stopping, read the training clock
            reading = is_sync_step(step, cfg) or step - first_step <= 2 or clock.out_of_time(step)
            if reading or (world_size == 1 and stop.signum is not None):
                loss = check_losses(step_losses, step, world_size, scaler, cfg.out_dir)[-1]
                step_losses.clear()
                stop.agree(device)
            clock.pause()
            if reading:
                clock.read(step, device)
            if bar:
                bar.update((clock.at(step) / 60 if clock.budget else step) - bar.n)

            # log: the first step at once, then every log_interval steps
            if (step % cfg.log_interval == 0 or step == first_step + 1) and master:
                speed = throughput(raw_model, step - last_log_step, tokens_per_step, time.time() - last_log_time,
                                   device_type, world_size)
                mfu = f" | MFU {100 * speed['mfu']:.1f}%" if speed["mfu"] else ""
                budget = f" | minute {clock.at(step) / 60:.1f} of {cfg.max_minutes:g}" if clock.budget else ""
                log(f"step {step}/{cfg.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                    f"{speed['tokens_per_s']:,.0f} tokens/s | {speed['tflops']:.2f} TFLOP/s{mfu}{budget} | "
                    f"{duration(clock.seconds_left(step, cfg, eval_seconds))} left")
                if tracker:
                    tracker.log({"loss": loss, "lr": lr, **{k: v for k, v in speed.items() if v is not None}}, step=step)
                last_log_time, last_log_step = time.time(), step
            if step == first_step + 2 and master and device_type == "cpu":  # the second step: free of start-up costs
                warn_if_too_long_for_a_cpu(clock.seconds_left(step, cfg, eval_seconds), log)

    if bar:
        bar.close()
    if finished:
        spent = f"{step} steps" if step >= cfg.max_iters else f"{step} steps in {cfg.max_minutes:g} minutes"
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device_type == "cuda" else ""
        log(f"done: {spent}, best val loss {best_val_loss:.4f}{memory}; sample with "
            f"`python sample.py --out_dir={cfg.out_dir}`")
    else:
        log(f"stopped by {signal.Signals(stop.agreed).name} after step {step}; saved {ckpt_path}. "
            f"Resume with: python train.py --init_from=resume --out_dir={cfg.out_dir} (plus your other flags)")
    if tracker:
        tracker.finish()
    # DDP's reducer first, while the process group lives: as its last holder, the reducer's destructor
    # joins gloo's threads with the GIL held, and one needing the GIL hangs the exit (a PyTorch bug)
    del model
    finish_distributed()
    if lock is not None:
        lock.close()  # out_dir is free for the next run
    if stop.agreed is not None:
        sys.exit(128 + stop.agreed)


if __name__ == "__main__":
    run_main(main)
