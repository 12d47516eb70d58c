"""Reading and writing the files train.py saves in out_dir.

- ckpt.pt: the whole training state (weights, optimizer, scaler, step, random states, the
  architecture as model_args), for --init_from=resume; sample.py and eval.py load it too.
- best_model_params.pt: the weights with the best validation loss, a plain state_dict; the
  architecture is in the config.json that train.py writes beside it.
"""
import json
import os
import pickle
from dataclasses import fields

import torch

from common import UserError, atomic_write, first_line
from model import GPT, GPTConfig

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


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
    """Strip the prefixes torch.compile (`_orig_mod.`) and DDP (`module.`) add to parameter names."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
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


def load_model(path, device="cpu"):
    """A GPT with the weights in `path`, built from the architecture saved with them.

    A full ckpt.pt carries its model_args; a plain state_dict (best_model_params.pt) takes them
    from the config.json that train.py writes beside it.
    """
    checkpoint = load_checkpoint(path, device)
    if "model" in checkpoint and "model_args" in checkpoint:
        model_args, state_dict = checkpoint["model_args"], checkpoint["model"]
    else:
        config_path = os.path.join(os.path.dirname(path), "config.json")
        try:
            with open(config_path) as f:
                model_args = json.load(f)["model_args"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path} holds weights only and {config_path} (its architecture) is missing or broken "
                            f"({type(e).__name__}); pass the ckpt.pt of the same run with --checkpoint") from e
        state_dict = checkpoint
    known = {f.name for f in fields(GPTConfig)}
    model = GPT(GPTConfig(**{k: v for k, v in model_args.items() if k in known}))
    try:
        model.load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"{path} does not fit the architecture {model_args}: {lines[-1]}") from e
    return model.to(device)
