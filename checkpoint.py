"""Reading and writing the files of a run's folder (out_dir), and reading the weights a fine-tune
starts from.

- ckpt.pt: the whole training state (weights, optimizers, scaler, step, training time, random
  states, the architecture as model_args): save_checkpoint writes it, resume reads it back for
  --init_from=resume; sample.py and eval.py load its weights too.
- best_model_params.pt: the weights with the best validation loss, a plain state_dict; the
  architecture is in the config.json that train.py writes beside it.
- metrics.csv and loss.png: one row per evaluation (write_metrics, read_metrics).
- A Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin), as export.py
  or transformers' save_pretrained write it, or OpenAI's GPT-2 from the hub: load_init_weights.

And the guards around them: one train.py per folder (lock_out_dir), no run silently replaced
(refuse_or_clear_earlier_run), and what to do when a write fails (explain_write_failures).
"""
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import pickle
import random
import shlex
import struct
import sys
import time
from dataclasses import fields

import numpy as np
import torch

import tokenizer
from common import UserError, WriteError, atomic_write, first_line, last_line
from data import bits_per_byte
from model import GPT, GPTConfig

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's GPT-2 sizes on the Hugging Face hub
# model_args but dropout (a training choice, not the weights'): GPT-2's shape, and the modern block's
# options (their defaults for GPT-2 files)
ARCHITECTURE = tuple(field.name for field in fields(GPTConfig) if field.name != "dropout")
# Our nn.Linear weights are (out, in); GPT-2's Conv1D keeps them as (in, out).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# A Hugging Face folder's weights: one file, or shards listed by an index (save_pretrained splits big models).
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Model options that were measured to be of no help and removed, with their off values: a file
# saved with one of them on holds weights this model has no place for.
REMOVED_OPTIONS = {"x0_skip": False, "logit_softcap": 0.0}
GPT_DEFAULTS = {f.name: f.default for f in fields(GPTConfig)}  # model_args a file predates take these
# what a run writes besides config.json
RUN_FILES = ("ckpt.pt", "best_model_params.pt", "metrics.csv", "loss.png", "tokenizer.json")
METRIC_FIELDS = ["step", "tokens", "train_loss", "val_loss", "val_perplexity", "val_bits_per_byte", "lr", "seconds"]


def save(obj, path):
    """torch.save to `path` atomically: a crash leaves the previous file or the new one, never half."""
    atomic_write(path, lambda f: torch.save(obj, f))


def describe_run(out_dir):
    """What an earlier run left in out_dir, as 'out/ckpt.pt at step 250, best val loss 1.2345';
    None when there is no checkpoint there."""
    ckpt_path, best_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "best_model_params.pt")
    if os.path.isfile(ckpt_path):
        try:  # mmap: only the few values read here come from disk, not the whole file
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
            return f"{ckpt_path} at step {state['step']}, best val loss {state['best_val_loss']:.4f}"
        except Exception:
            return f"{ckpt_path} (unreadable)"
    if os.path.isfile(best_path):
        return f"{best_path} (the best weights of an earlier run)"
    return None


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile (`_orig_mod.`) and DDP (`module.`) add to parameter names,
    in whatever order the wrappers were nested (train.py wraps the compiled model in DDP:
    `module._orig_mod.`)."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def load_checkpoint(path, device="cpu"):
    """The dict in a file saved by train.py (ckpt.pt or best_model_params.pt); UserError saying
    why when it cannot be used."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file; give a file such as "
                        f"{os.path.join(path, 'best_model_params.pt')}, or the folder as --out_dir")
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist; train a model first (python train.py) or pass --out_dir")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from e
    if magic != ZIP_MAGIC:
        what = "an empty file" if not magic else "not a file that torch.save wrote"
        raise UserError(f"{path} is not a checkpoint ({what}); use another checkpoint or retrain")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only=True refuses to run arbitrary pickled code
        raise UserError(f"{path} holds Python objects that are not tensors or plain values ({first_line(e)}); "
                        "only load checkpoints you trust, and convert them to a state_dict") from e
    except Exception as e:  # the file opened and starts like a zip: its contents are damaged
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {first_line(e)}); "
                        "use another checkpoint or retrain") from e
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a train.py checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def load_weights(path, device="cpu"):
    """(state_dict, model_args) of a file train.py saved.

    A full ckpt.pt carries its model_args; a plain state_dict (best_model_params.pt) takes them
    from the config.json that train.py writes beside it.
    """
    checkpoint = load_checkpoint(path, device)
    if "model" in checkpoint and "model_args" in checkpoint:
        return clean_state_dict(checkpoint["model"]), current_model_args(checkpoint["model_args"], path)
    config_path = os.path.join(os.path.dirname(path), "config.json")
    try:
        with open(config_path) as f:
            model_args = json.load(f)["model_args"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path} holds weights only and {config_path} (its architecture) is missing or broken "
                        f"({type(e).__name__}); pass the ckpt.pt of the same run instead") from e
    return clean_state_dict(checkpoint), current_model_args(model_args, path)


def current_model_args(model_args, path):
    """model_args without the REMOVED_OPTIONS, which must be off; UserError if one is on."""
    used = [f"{name}={model_args[name]!r}" for name, off in REMOVED_OPTIONS.items() if model_args.get(name, off) != off]
    if used:
        raise UserError(f"{path} was trained with {', '.join(used)}, a model option this kit no longer has (measured "
                        "of no help, and removed); use the version of the kit that trained it")
    return {k: v for k, v in model_args.items() if k not in REMOVED_OPTIONS}


def load_model(path, device="cpu"):
    """A GPT with the weights in `path` (see load_weights), built from the architecture saved with them."""
    state_dict, model_args = load_weights(path, device)
    known = {f.name for f in fields(GPTConfig)}
    model = GPT(GPTConfig(**{k: v for k, v in model_args.items() if k in known}))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit the architecture {model_args}: {last_line(e)}") from e
    return model.to(device)


# ----------------------------------------------------------------------------- weights to fine-tune from

def load_init_weights(source):
    """The weights a fine-tune starts from: (state_dict, architecture, record).

    source is a run folder (its best_model_params.pt), a ckpt.pt or best_model_params.pt, a
    Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin), or one of
    HUB_MODELS, fetched from the hub into huggingface_hub's cache (a path that exists wins over a
    hub name). architecture is model_args without dropout; record = {'source', 'file', 'sha256'}
    says where the weights came from, for config.json and ckpt.pt.
    """
    folder = download_gpt2(source) if source in HUB_MODELS and not os.path.exists(source) else None
    if folder is None and os.path.isdir(source):
        folder = source
    if folder is None and not os.path.isfile(source):
        raise UserError(f"--init_from={source} is not scratch, resume, an existing file or folder, or one of "
                        f"{', '.join(HUB_MODELS)}; give the run folder, checkpoint or Hugging Face folder to start from")
    if folder is not None and os.path.isfile(os.path.join(folder, "best_model_params.pt")):
        path = os.path.join(folder, "best_model_params.pt")  # a run of ours: its best weights
    elif folder is not None:
        path = next((os.path.join(folder, name) for name in HF_WEIGHTS if os.path.isfile(os.path.join(folder, name))),
                    None)
        if path is None or not os.path.isfile(os.path.join(folder, "config.json")):
            raise UserError(f"{folder} holds neither best_model_params.pt (a run of train.py) nor config.json with "
                            "model.safetensors or pytorch_model.bin (a Hugging Face GPT-2); give one of those")
    else:
        path = source
    if path.endswith(HF_WEIGHTS):
        state_dict, model_args, files = load_hf_gpt2(path)
    else:
        (state_dict, model_args), files = load_weights(path), [path]
    return state_dict, architecture_of(model_args), {"source": source, "file": os.path.abspath(path),
                                                     "sha256": sha256(*files)}


def architecture_of(model_args):
    """model_args' ARCHITECTURE, with GPT-2's defaults for the options a file predates (a GPT-2
    folder, or a run saved before the modern block's options existed)."""
    return {k: model_args.get(k, getattr(GPTConfig, k)) for k in ARCHITECTURE}


def download_gpt2(name):
    """The folder of OpenAI's GPT-2 `name` in huggingface_hub's cache, downloaded if not there yet."""
    from huggingface_hub import snapshot_download  # comes with `datasets`
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
    except LocalEntryNotFoundError as e:
        raise UserError(f"{name} is not in the Hugging Face cache and cannot be downloaded here (no connection to "
                        f"the hub, or HF_HUB_OFFLINE=1); download it first where there is internet: `hf download {name} "
                        f"config.json model.safetensors --local-dir models/{name}`, then --init_from=models/{name}") from e
    except HfHubHTTPError as e:
        raise UserError(f"cannot download {name} from the Hugging Face hub: {first_line(e)}") from e


def load_hf_gpt2(path):
    """(state_dict, model_args, files) of a Hugging Face GPT2LMHeadModel's weights (one of
    HF_WEIGHTS) and the config.json beside them, under our names and layouts; files: those read."""
    config_path = os.path.join(os.path.dirname(path), "config.json")
    try:
        with open(config_path) as f:
            hf = json.load(f)
        model_args = dict(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                          n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True)  # GPT-2 always has biases
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_path} is not a readable GPT-2 config.json ({type(e).__name__}: {first_line(e)})") from e
    # what model.py fixes and GPT2Config could set otherwise
    unlike = {"model_type": hf.get("model_type") != "gpt2",
              "activation_function": hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"),
              "n_inner": hf.get("n_inner") not in (None, 4 * hf["n_embd"]),
              "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5) != 1e-5,
              "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
              "scale_attn_weights": not hf.get("scale_attn_weights", True),
              "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False)}
    unlike = [f"{k}={hf.get(k)!r}" for k, differs in unlike.items() if differs]
    if unlike:
        raise UserError(f"{config_path} describes a model that model.py cannot be ({', '.join(unlike)}); "
                        "only GPT-2's architecture (GPT2LMHeadModel) loads")
    files = hf_shards(path) if path.endswith(".index.json") else [path]
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(file) if file.endswith(".safetensors") else load_checkpoint(file))
    state_dict = {}
    for name, tensor in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # older files store the causal mask as a buffer
            continue
        if not name.startswith(("transformer.", "lm_head.")):  # OpenAI's files on the hub lack the prefix
            name = "transformer." + name
        state_dict[name] = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
    wte, lm_head = state_dict.get("transformer.wte.weight"), state_dict.get("lm_head.weight")
    if wte is not None and lm_head is not None and not torch.equal(wte, lm_head):
        raise UserError(f"{path} has an LM head of its own, and model.py's is the token embedding; "
                        "only a GPT-2 with tied embeddings loads")
    state_dict["lm_head.weight"] = wte if wte is not None else lm_head
    return state_dict, model_args, files


def hf_shards(index_path):
    """The shard files a Hugging Face *.index.json names (its weight_map: tensor -> file), in order."""
    try:
        with open(index_path) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index_path} is not a readable index of weight shards ({type(e).__name__}: "
                        f"{first_line(e)}); download or save the model again") from e
    return [os.path.join(os.path.dirname(index_path), name) for name in names]


def read_safetensors(path):
    """{name: tensor} of a .safetensors file: an 8-byte little-endian header length, a JSON header
    (name -> dtype, shape, byte range after the header), then the raw little-endian data, the
    layout export.py writes. The format is this simple, so reading needs no extra package."""
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
            body = bytearray(os.path.getsize(path) - 8 - header_size)
            f.readinto(body)
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            count = (end - start) // dtype.itemsize
            tensor = torch.frombuffer(body, dtype=dtype, offset=start, count=count) if count else torch.empty(0, dtype=dtype)
            tensors[name] = tensor.reshape(info["shape"])
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}: {first_line(e)}); "
                        "export or download it again") from e
    return tensors


def sha256(*paths):
    """The sha256 of the files, one after the other, hex: which weights a fine-tune started from,
    whatever their path later (a sharded model's: of its shards in order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fine_tune_record(ckpt_path):
    """(architecture, record) of the run in ckpt_path when it is a fine-tune (see load_init_weights);
    None for a run from scratch, or a ckpt.pt that cannot be read (resume() then says why)."""
    try:  # mmap: only the few values read here come from disk
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        if not state.get("init"):
            return None
        return architecture_of(current_model_args(state["model_args"], ckpt_path)), state["init"]
    except Exception:
        return None


# ----------------------------------------------------------------------------- starting a fine-tune

def load_fine_tune_source(cfg):
    """The weights --init_from names: (state_dict, architecture, record), see
    load_init_weights. Refused when they lie in out_dir, whose files this run replaces."""
    state_dict, architecture, record = load_init_weights(cfg.init_from)
    if os.path.realpath(os.path.dirname(record["file"])) == os.path.realpath(cfg.out_dir):
        raise UserError(f"--init_from={cfg.init_from} is in --out_dir={cfg.out_dir}, whose files this run would "
                        "replace; fine-tune into another --out_dir")
    return state_dict, architecture, record


def fine_tune_model_args(cfg, given, architecture, source):
    """model_args of a run that starts from trained weights (or resumes such a run): their
    architecture (architecture_of), this run's dropout, and block_size at most their
    number of positions (all of them unless --block_size is given). A flag (or preset) in `given`
    that contradicts them is refused."""
    conflicts = [f"--{k}={getattr(cfg, k)} but {source} has {k}={v}" for k, v in architecture.items()
                 if k in given and k not in ("block_size", "vocab_size") and getattr(cfg, k) != v]
    if conflicts:
        raise UserError(f"a fine-tune takes its architecture from the weights it starts from: {'; '.join(conflicts)}; "
                        "leave these flags out")
    positions = architecture["block_size"]
    block_size = cfg.block_size if "block_size" in given else positions
    if block_size > positions:
        raise UserError(f"--block_size={block_size} is longer than the {positions} positions of {source}; "
                        f"use --block_size={positions} or less")
    return {**architecture, "block_size": block_size, "dropout": cfg.dropout}


def load_fine_tune_weights(model, state_dict, source):
    """Copy the weights a fine-tune starts from into `model`; their position table is cropped to
    the model's block_size (the first positions are the ones a shorter context uses)."""
    if "transformer.wpe.weight" in state_dict:  # (RoPE models have no position table)
        wpe = state_dict["transformer.wpe.weight"]
        state_dict = {**state_dict, "transformer.wpe.weight": wpe[:model.config.block_size]}
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"the weights of {source} do not fit its own architecture ({last_line(e)}); "
                        "the file is damaged or not a GPT-2") from e


# ----------------------------------------------------------------------------- a run's folder: state, metrics, guards

def metrics_row(step, losses, lr, tokens_per_step, val_meta, seconds):
    val = losses["validation"]
    return {"step": step, "tokens": step * tokens_per_step, "train_loss": round(losses["train"], 6),
            "val_loss": round(val, 6), "val_perplexity": round(math.exp(min(val, 50)), 4),
            "val_bits_per_byte": round(bits_per_byte(val, val_meta), 6), "lr": lr, "seconds": round(seconds, 1)}


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


def save_checkpoint(path, model, optimizers, scaler, model_args, cfg, step, best_val_loss, train_seconds, world_size,
                    wandb_run_id, init):
    """Write the whole training state to `path` (rank 0 writes). Every rank must call it: it
    gathers each rank's random state, so that a resumed run draws the same dropout masks. init:
    where a fine-tune's first weights came from (load_fine_tune_source), None from scratch.
    train_seconds: the training time used, so that a resumed --max_minutes budget goes on."""
    states = [rng_state()]
    if torch.distributed.is_initialized():
        states = [None] * world_size
        torch.distributed.all_gather_object(states, rng_state())
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    # the config records the optimizer (--optimizer) that made the optimizer states
    save({"model": model.state_dict(), "scaler": scaler.state_dict(),
          "optimizer": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
          "model_args": model_args, "config": vars(cfg), "step": step, "best_val_loss": best_val_loss,
          "train_seconds": train_seconds, "rng": states, "wandb_run_id": wandb_run_id, "init": init}, path)


def resume(path, model, optimizers, optimizer_name, scaler, model_args, rank, world_size, log):
    """Load ckpt.pt into the model, optimizers, scaler and random generators; (step, best_val_loss,
    training seconds used, the id of its W&B run or None)."""
    # read onto the CPU: the generators' states must be CPU tensors, and load_state_dict copies the
    # weights and optimizer states to their parameters' device (no second copy on the GPU meanwhile)
    state = load_checkpoint(path, "cpu")
    # an option newer than the checkpoint: its default; a removed one: refused if it was on
    saved = {**GPT_DEFAULTS, **current_model_args(state.get("model_args", {}), path)}
    differ = {k: (saved.get(k), v) for k, v in model_args.items() if k != "dropout" and saved.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}={old} in the checkpoint but {new} now" for k, (old, new) in differ.items())
        raise UserError(f"{path} is of another architecture ({detail}); use the same settings or a new --out_dir")
    saved_optimizer = state.get("config", {}).get("optimizer", "adamw")  # checkpoints from before Muon: AdamW
    if saved_optimizer != optimizer_name:
        raise UserError(f"{path} was trained with --optimizer={saved_optimizer}, not --optimizer={optimizer_name}, "
                        f"and one's state does not carry over to the other; resume with --optimizer={saved_optimizer}, "
                        "or start a new run in another --out_dir")
    try:
        model.load_state_dict(clean_state_dict(state["model"]))
        saved_states = state["optimizer"]
        if "param_groups" in saved_states:  # written before Muon: the AdamW's state alone
            saved_states = {"adamw": saved_states}
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(saved_states[name])
        scaler.load_state_dict(state["scaler"])
        step, best_val_loss, rng_states = state["step"], state["best_val_loss"], state["rng"]
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a usable train.py checkpoint ({type(e).__name__}: {e}); "
                        "start again with --init_from=scratch and a new --out_dir") from e
    if len(rng_states) == world_size:
        set_rng_state(rng_states[rank])
    else:
        log(f"note: the checkpoint was written by {len(rng_states)} processes, now {world_size}: "
            "dropout continues with fresh random streams (not bit-identical to an uninterrupted run)")
    log(f"resuming from {path} at step {step} (best val loss {best_val_loss:.4f})")
    return step, best_val_loss, state.get("train_seconds", 0.0), state.get("wandb_run_id")


def write_run_config(cfg, model_args, world_size, init, tokenizer_record):
    """config.json: what sample.py, eval.py and export.py need to rebuild the model, and the run's
    settings. A tokenizer of the data's own is copied beside it: the run folder is self-contained."""
    if tokenizer_record["kind"] != "gpt2":
        tokenizer.copy_file(cfg.data_dir, cfg.out_dir)
    run_config = {"model_args": model_args, "config": vars(cfg), "world_size": world_size, "init": init,
                  "tokenizer": tokenizer.essentials(tokenizer_record)}
    atomic_write(os.path.join(cfg.out_dir, "config.json"), lambda f: f.write(json.dumps(run_config, indent=2).encode()))


def run_data_dir(path):
    """The data_dir of the run whose file `path` is, from the config.json beside it; None if none says."""
    try:
        with open(os.path.join(os.path.dirname(path), "config.json")) as f:
            return json.load(f)["config"]["data_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_out_dir(out_dir):
    """Claim out_dir for this run, so that a second train.py on it is refused; returns the open
    lock file, which holds the claim until this process ends. The operating system drops the
    lock when the process ends however it ends (kill -9 included), so no lock is ever stale."""
    try:
        import fcntl
    except ImportError:  # not on Windows: runs are not guarded there
        return None
    lock = open(os.path.join(out_dir, ".train.lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "a process that is just starting"
        lock.close()
        raise UserError(f"{out_dir} is in use by another train.py ({owner}); wait for it to end or stop it, "
                        "or choose another --out_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M')}: {shlex.join(['python'] + sys.argv)}")
    lock.flush()
    return lock


def refuse_or_clear_earlier_run(cfg, log):
    """A new run (from scratch or a fine-tune) must not silently replace the run already in
    out_dir: refuse, unless --overwrite."""
    found = describe_run(cfg.out_dir)
    if found is None:
        return
    if not cfg.overwrite:
        raise UserError(f"{cfg.out_dir} already holds a run: {found}. Continue it with --init_from=resume, "
                        "choose another --out_dir, or pass --overwrite=true to replace it")
    log(f"--overwrite=true: replacing the earlier run in {cfg.out_dir} ({found})")
    for name in RUN_FILES:
        if os.path.exists(os.path.join(cfg.out_dir, name)):
            os.remove(os.path.join(cfg.out_dir, name))


@contextlib.contextmanager
def explain_write_failures(out_dir):
    """A file of the run could not be written (a full disk...): say what is intact and how to go on."""
    try:
        yield
    except WriteError as e:
        saved = describe_run(out_dir) or "no checkpoint yet"
        raise UserError(f"{e}. The files already in {out_dir} are intact ({saved}); make room, then continue with "
                        f"`python train.py --init_from=resume --out_dir={out_dir}` (plus your other flags)") from e
