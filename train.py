"""Train the GPT on the token files written by prepare.py.

    python train.py                                   # one GPU, or CPU/MPS, with config.py's defaults
    python train.py presets/gpu.py --max_iters=2000   # a preset, then flags (later ones win)
    python train.py --init_from=resume                # continue out_dir/ckpt.pt exactly where it stopped
    torchrun --standalone --nproc_per_node=8 train.py # data-parallel over 8 GPUs

Every knob is in config.py. Outputs in out_dir: ckpt.pt (the latest full state, for resuming),
best_model_params.pt (the weights with the best validation loss, a plain state_dict),
config.json (the run's configuration), metrics.csv and loss.png.
"""
import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch

import config
from common import UserError, atomic_write, make_output_dir, remove_stale_temp_files, resolve_device, run_main
from model import GPT, GPTConfig, clean_state_dict, load_checkpoint

# Dense bf16 tensor-core peak, TFLOP/s, for the MFU column of the log (datasheet figures).
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "L4": 121,
                    "RTX 4090": 165, "RTX 3090": 71}
TRAIN_STREAM, EVAL_STREAM = 0, 1  # keep training and evaluation batches from sharing random streams
METRIC_FIELDS = ["step", "tokens", "train_loss", "val_loss", "val_perplexity", "val_bits_per_byte", "lr", "seconds"]


# ----------------------------------------------------------------------------- setup

def setup_distributed():
    """(rank, local_rank, world_size); initializes the process group when run under torchrun."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    import torch.distributed as dist

    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return rank, local_rank, world_size


def resolve_dtype(name, device_type):
    """The autocast dtype: 'auto' = bfloat16 where supported, else float16 on CUDA, float32 elsewhere."""
    bf16_ok = {"cuda": device_type == "cuda" and torch.cuda.is_bf16_supported(), "cpu": True, "mps": False}[device_type]
    if name == "auto":
        name = "bfloat16" if bf16_ok and device_type == "cuda" else "float16" if device_type == "cuda" else "float32"
    if name == "bfloat16" and not bf16_ok:
        raise UserError(f"--dtype=bfloat16 is not supported on this {device_type} device; use --dtype=float16 or float32")
    if name == "float16" and device_type == "cpu":
        raise UserError("--dtype=float16 needs a GPU; on CPU use --dtype=float32 or bfloat16")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ----------------------------------------------------------------------------- data

def load_meta(data_dir, block_size):
    """Read meta.json and check both .bin files against it; return the meta dict."""
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(meta_path):
        raise UserError(f"{meta_path} not found; run `python prepare.py --out-dir {data_dir}` first (or set --data_dir)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        splits = {split: meta["splits"][split]["tokens"] for split in ("train", "validation")}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{meta_path} is not a prepare.py meta.json; rerun `python prepare.py --force`") from None
    if meta.get("dtype") != "uint16":
        raise UserError(f"{meta_path} says dtype {meta.get('dtype')!r}; train.py reads uint16, rerun prepare.py --force")
    for split, tokens in splits.items():
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found; run `python prepare.py --out-dir {data_dir}` first")
        size = os.path.getsize(path)
        if size != 2 * tokens:
            raise UserError(f"{path} holds {size} bytes but meta.json says {tokens} uint16 tokens ({2 * tokens} bytes); "
                            "rerun `python prepare.py --force`")
        if tokens <= block_size:
            raise UserError(f"the {split} split has {tokens} tokens, fewer than one window of block_size+1="
                            f"{block_size + 1}; prepare more data or lower --block_size")
    return meta


def get_batch(data_dir, split, batch_size, block_size, rng, device):
    """A batch of windows at random places: x = tokens[i:i+T], y = tokens[i+1:i+T+1] (the next token)."""
    # Re-open the memmap each batch: a long-lived np.memmap keeps every page it touched (a leak).
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    starts = rng.integers(0, len(data) - block_size, size=batch_size)
    windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
    x, y = windows[:, :-1], windows[:, 1:]
    if device.startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


# ----------------------------------------------------------------------------- schedule

def get_lr(step, cfg):
    """Learning rate for optimizer step `step`: linear warmup, then cosine decay to min_lr."""
    lr, min_lr, warmup, decay = cfg["learning_rate"], cfg["min_lr"], cfg["warmup_iters"], cfg["lr_decay_iters"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay:
        return min_lr
    progress = (step - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


# ----------------------------------------------------------------------------- state

def batch_rng(seed, step, micro_batch):
    """The random stream that picks the windows of one micro-batch.

    It depends only on the step and the micro-batch's index within the global batch (rank *
    micro-batches per rank + micro-step), so each rank reads different windows, the global batch
    is the same whatever the number of processes, and resuming at a step needs no sampler state.
    """
    return np.random.default_rng([seed, TRAIN_STREAM, step, micro_batch])


def rng_state():
    """The generators dropout (and anything else random) draws from, so that resume is bit-exact."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)  # weights_only-loadable
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def write_metrics(out_dir, rows):
    """Rewrite metrics.csv and loss.png from all evaluation rows so far."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "metrics.csv"), lambda f: f.write(buffer.getvalue().encode()))

    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], label="train", marker=".")
    ax.plot(steps, [r["val_loss"] for r in rows], label="validation", marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write(os.path.join(out_dir, "loss.png"), lambda f: f.write(png.getvalue()))


def read_metrics(out_dir, up_to_step):
    """Rows of an earlier run's metrics.csv, for resuming, without those past the checkpoint."""
    path = os.path.join(out_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k in ("step", "tokens") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= up_to_step]


# ----------------------------------------------------------------------------- training

class StopRequest:
    """Turns SIGINT / SIGTERM into a flag, so training stops after the current step and saves."""

    def __init__(self):
        self.signum = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum


def main():
    cfg = config.parse_args(sys.argv[1:])
    rank, local_rank, world_size = setup_distributed()
    distributed = world_size > 1 or "RANK" in os.environ
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    device = resolve_device(cfg["device"], local_rank, distributed)
    device_type = device.split(":")[0]
    dtype = resolve_dtype(cfg["dtype"], device_type)
    if cfg["gradient_accumulation_steps"] % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible by "
                        f"the number of processes ({world_size}) to keep the global batch")
    accum_steps = cfg["gradient_accumulation_steps"] // world_size
    make_output_dir(cfg["out_dir"], "--out_dir")
    meta = load_meta(cfg["data_dir"], cfg["block_size"])
    out_dir, data_dir, block_size, batch_size = cfg["out_dir"], cfg["data_dir"], cfg["block_size"], cfg["batch_size"]
    ckpt_path = os.path.join(out_dir, "ckpt.pt")

    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    autocast = (contextlib.nullcontext() if dtype == torch.float32
                else torch.autocast(device_type=device_type, dtype=dtype))

    model_args = dict(vocab_size=meta["vocab_size"], block_size=block_size, n_layer=cfg["n_layer"],
                      n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"], bias=cfg["bias"])
    model = GPT(GPTConfig(**model_args)).to(device)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                          device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    step, best_val_loss, rows = 0, float("inf"), []
    torch.manual_seed(cfg["seed"] + rank)  # after the init: each rank its own dropout masks
    random.seed(cfg["seed"] + rank)
    np.random.seed(cfg["seed"] + rank)

    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(ckpt_path, device)
        saved = checkpoint.get("model_args", {})
        differ = {k: (saved.get(k), v) for k, v in model_args.items() if k != "dropout" and saved.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}={old} in the checkpoint but {new} now" for k, (old, new) in differ.items())
            raise UserError(f"{ckpt_path} is of another architecture ({detail}); use the same settings or a new --out_dir")
        try:
            model.load_state_dict(clean_state_dict(checkpoint["model"]))
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            step, best_val_loss = checkpoint["step"], checkpoint["best_val_loss"]
            rng_states = checkpoint["rng"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{ckpt_path} is not a usable train.py checkpoint ({type(e).__name__}); "
                            "start again with --init_from=scratch and a new --out_dir") from None
        if len(rng_states) == world_size:
            set_rng_state(rng_states[rank])
        else:
            log(f"note: the checkpoint was written by {len(rng_states)} processes, now {world_size}: "
                "dropout continues with fresh random streams (not bit-identical to an uninterrupted run)")
        rows = read_metrics(out_dir, step) if master else []
        log(f"resuming from {ckpt_path} at step {step} (best val loss {best_val_loss:.4f})")
    resumed_at = step if cfg["init_from"] == "resume" else None

    raw_model = model
    use_compile = cfg["compile"] == "true" or (cfg["compile"] == "auto" and device_type == "cuda")
    if use_compile:
        model = torch.compile(model)
    eval_model = model  # compiled, but without DDP's gradient machinery
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)

    if master:
        remove_stale_temp_files(out_dir)
        run_config = {"model_args": model_args, "config": cfg, "world_size": world_size}
        atomic_write(os.path.join(out_dir, "config.json"), lambda f: f.write(json.dumps(run_config, indent=2).encode()))
    tokens_per_step = batch_size * block_size * accum_steps * world_size
    log(f"model: {raw_model.num_params() / 1e6:.2f}M parameters | device {device}, {str(dtype)[6:]}, "
        f"compile {use_compile}, {world_size} process(es) | {tokens_per_step:,} tokens per step")

    def all_mean(value):
        """Mean of a float over all ranks."""
        if not distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.item() / world_size

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches per split, the same batches at every evaluation."""
        model.eval()
        losses = {}
        for offset, split in enumerate(("train", "validation")):
            eval_rng = np.random.default_rng([cfg["seed"], EVAL_STREAM, offset, rank])
            total = 0.0
            for _ in range(cfg["eval_iters"]):
                x, y = get_batch(data_dir, split, batch_size, block_size, eval_rng, device)
                with autocast:
                    _, loss = eval_model(x, y)
                total += loss.item()
            losses[split] = all_mean(total / cfg["eval_iters"])
        model.train()
        return losses

    def checkpoint_state():
        states = [rng_state()]
        if distributed:
            states = [None] * world_size
            torch.distributed.all_gather_object(states, rng_state())
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "model_args": model_args, "config": cfg, "step": step, "best_val_loss": best_val_loss, "rng": states}

    last_saved_step = resumed_at  # the step whose state ckpt.pt on disk holds

    def save_checkpoint():
        nonlocal last_saved_step
        if last_saved_step == step:
            return
        state = checkpoint_state()  # every rank takes part (it gathers their random states)
        if master:
            save_torch(state, ckpt_path)
        last_saved_step = step

    val_meta = meta["splits"]["validation"]
    tokens_per_byte = val_meta["tokens"] / max(val_meta["text_bytes"], 1)
    stop = StopRequest()
    start_time = time.time()

    def train_batch(step, micro_step):
        rng = batch_rng(cfg["seed"], step, rank * accum_steps + micro_step)
        return get_batch(data_dir, "train", batch_size, block_size, rng, device)

    x, y = train_batch(step, 0)
    last_log_time, last_log_step = time.time(), step

    while True:
        # --- evaluate, keep the best weights, save the latest state ---
        if (step % cfg["eval_interval"] == 0 or step == cfg["max_iters"]) and step != resumed_at:
            losses = estimate_loss()
            val = losses["validation"]
            row = {"step": step, "tokens": step * tokens_per_step, "train_loss": round(losses["train"], 6),
                   "val_loss": round(val, 6), "val_perplexity": round(math.exp(min(val, 50)), 4),
                   "val_bits_per_byte": round(val / math.log(2) * tokens_per_byte, 6),
                   "lr": get_lr(step, cfg), "seconds": round(time.time() - start_time, 1)}
            log(f"eval step {step}: train loss {losses['train']:.4f} | val loss {val:.4f}, "
                f"perplexity {row['val_perplexity']:.2f}, {row['val_bits_per_byte']:.4f} bits/byte")
            if master:
                rows.append(row)
                write_metrics(out_dir, rows)
            if val < best_val_loss:
                best_val_loss = val
                if master:
                    save_torch(raw_model.state_dict(), os.path.join(out_dir, "best_model_params.pt"))
                save_checkpoint()
                log(f"  new best val loss; saved {out_dir}/best_model_params.pt and ckpt.pt")
            last_log_time, last_log_step = time.time(), step  # keep evaluation out of tokens/s
        if step == cfg["max_iters"] or stop.signum is not None:
            save_checkpoint()
            if step == cfg["max_iters"]:
                log(f"done: {step} steps, best val loss {best_val_loss:.4f}; sample with "
                    f"`python sample.py --out_dir={out_dir}`")
                break
            log(f"stopped by {signal.Signals(stop.signum).name} after step {step}; saved {ckpt_path}. "
                f"Resume with: python train.py --init_from=resume --out_dir={out_dir} (plus your other flags)")
            break
        if step % cfg["checkpoint_interval"] == 0 and step > 0:
            save_checkpoint()

        # --- one optimizer step over accum_steps micro-batches ---
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro_step in range(accum_steps):
            last = micro_step == accum_steps - 1
            # under DDP, all-reduce the gradients only once, after the last micro-batch
            sync = contextlib.nullcontext() if last or not distributed else model.no_sync()
            with sync:
                with autocast:
                    _, loss = model(x, y)
                    loss = loss / accum_steps  # the sum over micro-steps is the mean over the batch
                # fetch the next micro-batch while the GPU works on this one
                x, y = train_batch(step + 1, 0) if last else train_batch(step, micro_step + 1)
                scaler.scale(loss).backward()
            step_loss += loss.detach()
        loss_value = all_mean(step_loss.item())  # the same verdict on every rank
        if not math.isfinite(loss_value) and not scaler.is_enabled():
            raise UserError(f"the training loss became {loss_value} at step {step}; stopping without saving "
                            f"(the best weights in {out_dir} are untouched). Lower --learning_rate or try --dtype=float32, "
                            "then --init_from=resume")
        if cfg["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)  # with fp16, skips the update when the gradients overflowed
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if distributed:  # every rank must agree to stop at the same step
            flag = torch.tensor([0 if stop.signum is None else stop.signum], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop.signum = int(flag.item()) or None

        if step % cfg["log_interval"] == 0 and master:
            elapsed = time.time() - last_log_time
            tokens_per_s = (step - last_log_step) * tokens_per_step / elapsed
            flops = raw_model.flops_per_token() * tokens_per_s
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items()
                         if device_type == "cuda" and k in torch.cuda.get_device_name()), None)
            mfu = f" | MFU {100 * flops / (peak * 1e12 * world_size):.1f}%" if peak else ""
            log(f"step {step}/{cfg['max_iters']} | loss {loss_value:.4f} | lr {lr:.2e} | "
                f"{tokens_per_s:,.0f} tokens/s | {flops / 1e12:.2f} TFLOP/s{mfu}")
            last_log_time, last_log_step = time.time(), step

    if distributed:
        torch.distributed.barrier()  # leave together: no rank tears down while another still talks
        torch.distributed.destroy_process_group()
    if stop.signum is not None:
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    run_main(main)
