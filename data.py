"""The token files prepare.py writes (train.bin, validation.bin, meta.json), as train.py,
eval.py and bench.py read them: checking them, drawing batches, converting loss to bits per byte."""
import json
import math
import os

import numpy as np
import torch

from common import UserError

TRAIN_STREAM, EVAL_STREAM = 0, 1  # keep training and evaluation batches from sharing random streams


def load_meta(data_dir, block_size):
    """Read meta.json and check both .bin files against it; return the meta dict."""
    meta_path = os.path.join(data_dir, "meta.json")
    out_dir = "" if data_dir == "data" else f" --out_dir={data_dir}"
    prepare, prepare_again = f"python prepare.py{out_dir}", f"python prepare.py --force{out_dir}"
    if not os.path.isfile(meta_path):
        raise UserError(f"{meta_path} not found; run `{prepare}` first (or set --data_dir)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        splits = {split: meta["splits"][split]["tokens"] for split in ("train", "validation")}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{meta_path} is not a prepare.py meta.json ({type(e).__name__}); "
                        f"rerun `{prepare_again}`") from e
    if meta.get("dtype") != "uint16":
        raise UserError(f"{meta_path} says dtype {meta.get('dtype')!r}; train.py reads uint16; "
                        f"rerun `{prepare_again}`")
    for split, tokens in splits.items():
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found; run `{prepare}` first")
        size = os.path.getsize(path)
        if size != 2 * tokens:
            raise UserError(f"{path} holds {size} bytes but meta.json says {tokens} uint16 tokens ({2 * tokens} bytes); "
                            f"rerun `{prepare_again}`")
        if tokens <= block_size:
            raise UserError(f"the {split} split has {tokens} tokens, fewer than one window of block_size+1="
                            f"{block_size + 1}; prepare more data or lower --block_size")
    return meta


def batch_rng(seed, step, micro_batch):
    """The random stream that picks the windows of one training micro-batch.

    It depends only on the step and the micro-batch's index within the global batch (rank *
    micro-batches per rank + micro-step), so each rank reads different windows, the global batch
    is the same whatever the number of processes, and resuming at a step needs no sampler state.
    """
    return np.random.default_rng([seed, TRAIN_STREAM, step, micro_batch])


def eval_rng(seed, split_index, rank):
    """The random stream of one evaluation: the same windows at every evaluation of a run."""
    return np.random.default_rng([seed, EVAL_STREAM, split_index, rank])


def get_batch(data_dir, split, batch_size, block_size, rng, device):
    """A batch of windows at random places: x = tokens[i:i+T], y = tokens[i+1:i+T+1] (the next token)."""
    # Re-open the memmap each batch: a long-lived np.memmap keeps every page it touched (a leak).
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    starts = rng.integers(0, len(data) - block_size, size=batch_size)
    windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    x, y = windows[:, :-1], windows[:, 1:]
    if str(device).startswith("cuda"):  # pinned memory lets the copy run while the GPU computes
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


def bits_per_byte(loss, split_meta):
    """A loss in nats per token as bits per byte of the split's text: comparable across tokenizers."""
    return loss / math.log(2) * split_meta["tokens"] / max(split_meta["text_bytes"], 1)
