"""Reading and writing the files train.py saves in out_dir, and reading the weights a fine-tune
starts from.

- ckpt.pt: the whole training state (weights, optimizer, scaler, step, random states, the
  architecture as model_args), for --init_from=resume; sample.py and eval.py load it too.
- best_model_params.pt: the weights with the best validation loss, a plain state_dict; the
  architecture is in the config.json that train.py writes beside it.
- A Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin), as export.py
  or transformers' save_pretrained write it, or OpenAI's GPT-2 from the hub: load_init_weights.
"""
import hashlib
import json
import os
import pickle
import struct
from dataclasses import fields

import torch

from common import UserError, atomic_write, first_line, last_line
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
        return clean_state_dict(checkpoint["model"]), checkpoint["model_args"]
    config_path = os.path.join(os.path.dirname(path), "config.json")
    try:
        with open(config_path) as f:
            model_args = json.load(f)["model_args"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path} holds weights only and {config_path} (its architecture) is missing or broken "
                        f"({type(e).__name__}); pass the ckpt.pt of the same run instead") from e
    return clean_state_dict(checkpoint), model_args


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
        return (architecture_of(state["model_args"]), state["init"]) if state.get("init") else None
    except Exception:
        return None
