"""Evaluate a checkpoint on a whole split: loss, perplexity, bits per byte.

    python eval.py                                    # out/best_model_params.pt on data/validation.bin
    python eval.py --checkpoint out/ckpt.pt --split train --max_tokens 1000000

Unlike the estimate train.py logs (eval_iters random batches), this reads the split once from
start to end in non-overlapping windows of the model's block_size, so every token is predicted
exactly once and the result is the same number on every run. Each window starts with a fresh
context, as in training. Bits per byte uses the split's tokens per byte of text from meta.json,
so models with different tokenizers can be compared.
"""
import math
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import cpu_fast_paths
import tokenizer
from checkpoint import load_model, run_data_dir
from common import ArgumentParser, UserError, resolve_device, run_main
from data import bits_per_byte, load_meta


@torch.no_grad()
def evaluate(model, tokens, batch_size, device):
    """(summed cross-entropy in nats, tokens predicted) over `tokens`, a 1-D array of token ids.

    Window i reads x = tokens[i*T : i*T+T] and predicts y = tokens[i*T+1 : i*T+T+1]; the last
    window may be shorter, so all len(tokens) - 1 targets are counted once.
    """
    model.eval()
    T = model.config.block_size
    starts = list(range(0, len(tokens) - 1, T))
    total_nats, total_tokens = 0.0, 0
    # a progress bar on a terminal only (the whole TinyStories validation split takes a while on CPU)
    for i in tqdm(range(0, len(starts), batch_size), unit="batch", desc="evaluating", disable=None):
        batch = starts[i:i + batch_size]
        # a short last window is padded; its padded targets are -1, which the loss ignores
        x = np.zeros((len(batch), T), dtype=np.int64)
        y = np.full((len(batch), T), -1, dtype=np.int64)
        for row, start in enumerate(batch):
            window = tokens[start:start + T + 1].astype(np.int64)
            x[row, :len(window) - 1] = window[:-1]
            y[row, :len(window) - 1] = window[1:]
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        _, loss = model(x, y)  # the mean over the counted targets, by the training loss's own code
        counted = int((y != -1).sum())
        total_nats += loss.item() * counted  # summed in a Python float (float64): long splits lose nothing
        total_tokens += counted
    return total_nats, total_tokens


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", default="out", help="the training run's folder")
    parser.add_argument("--checkpoint", help="weights to evaluate (default: OUT_DIR/best_model_params.pt)")
    parser.add_argument("--data_dir", help="folder with the .bin files and meta.json of prepare.py "
                                           "(default: the run's, from its config.json, else data)")
    parser.add_argument("--split", default="validation", choices=("validation", "train"), help="which split to read")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per forward pass (only speed and memory)")
    parser.add_argument("--max_tokens", type=int, default=0, help="read only the first N tokens (0 = the whole split)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size={args.batch_size} must be at least 1")
    if args.max_tokens < 0 or args.max_tokens == 1:
        raise UserError(f"--max_tokens={args.max_tokens} must be 0 (all) or at least 2 (an input and its target)")
    return args


def main():
    args = parse_args(sys.argv[1:])
    device = resolve_device(args.device)
    checkpoint = args.checkpoint or os.path.join(args.out_dir, "best_model_params.pt")
    model = load_model(checkpoint, device)
    cpu_fast_paths.enable(model, device)  # only where it is faster: a CPU (here always float32)
    data_dir = args.data_dir or run_data_dir(checkpoint) or "data"
    meta = load_meta(data_dir, model.config.block_size)
    tokenizer.check_data_for(checkpoint, data_dir, meta, checkpoint)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"{data_dir} has token ids up to {meta['vocab_size'] - 1} but the model's vocabulary "
                        f"is {model.config.vocab_size}; evaluate on data prepared with the model's tokenizer")
    tokens = np.memmap(os.path.join(data_dir, f"{args.split}.bin"), dtype=np.uint16, mode="r")
    if args.max_tokens:
        tokens = tokens[:args.max_tokens]
    split = meta["splits"][args.split]

    nats, count = evaluate(model, tokens, args.batch_size, device)
    loss = nats / count
    part = "" if len(tokens) == split["tokens"] else f" (the first {len(tokens):,} of {split['tokens']:,})"
    print(f"{checkpoint} on {data_dir}/{args.split}.bin{part}, windows of {model.config.block_size} tokens")
    print(f"loss {loss:.4f} | perplexity {math.exp(min(loss, 50)):.2f} | {bits_per_byte(loss, split):.4f} bits/byte | "
          f"{count:,} tokens evaluated")


if __name__ == "__main__":
    run_main(main)
