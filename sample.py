"""Generate stories with a trained model.

    python sample.py --prompt "Once upon a time"
    python sample.py --prompt "Tom found a dog" --num_samples 3 --temperature 0.7 --stream

Loads the best weights of a run (out_dir/best_model_params.pt, with the architecture from the
config.json beside it) or any checkpoint given with --checkpoint.
"""
import contextlib
import os
import sys
import time

import torch

import cpu_fast_paths
from checkpoint import load_model
from common import ArgumentParser, UserError, resolve_device, run_main
from tokenizer import EOT_TOKEN, load_tokenizer


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", default="Once upon a time", help="text the story starts with")
    parser.add_argument("--out_dir", default="out", help="the training run's folder")
    parser.add_argument("--checkpoint", help="weights to load (default: OUT_DIR/best_model_params.pt)")
    parser.add_argument("--num_samples", type=int, default=1, help="how many stories to write")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate per story")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random")
    parser.add_argument("--top_k", type=int, default=200, help="sample from the k likeliest tokens (0 = all)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: smallest set with probability p")
    parser.add_argument("--seed", type=int, default=1337, help="random seed, for repeatable samples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no_kv_cache", action="store_true", help="recompute the whole context for every token")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--ignore_eot", action="store_true", help="keep going past the end-of-story token")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError("--num_samples and --max_new_tokens must be at least 1")
    if args.temperature < 0:
        raise UserError(f"--temperature={args.temperature} must not be negative (0 = greedy)")
    if args.top_k < 0:
        raise UserError(f"--top_k={args.top_k} must not be negative (0 = no top-k)")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top_p={args.top_p} must be in (0, 1]")
    return args


def main():
    args = parse_args(sys.argv[1:])
    if not args.prompt.strip():
        raise UserError("--prompt is empty; give the story a beginning, e.g. --prompt \"Once upon a time\"")
    device = resolve_device(args.device)
    model = load_model(args.checkpoint or os.path.join(args.out_dir, "best_model_params.pt"), device)
    model.eval()
    cpu_fast_paths.enable(model, device)  # only where it is faster: a CPU (here always float32)
    enc = load_tokenizer()
    prompt_ids = enc.encode_ordinary(args.prompt)
    if len(prompt_ids) > model.config.block_size:
        raise UserError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of "
                        f"{model.config.block_size}; shorten it")
    torch.manual_seed(args.seed)
    autocast = contextlib.nullcontext()
    if device.startswith("cuda"):
        autocast = torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)

    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40)
        print(args.prompt, end="", flush=True)
        new_tokens, started = [], time.time()
        with autocast:
            for token in model.generate_tokens(idx, args.max_new_tokens, args.temperature, args.top_k or None,
                                               args.top_p, kv_cache=not args.no_kv_cache):
                token = token.item()
                if token == EOT_TOKEN and not args.ignore_eot:
                    break
                new_tokens.append(token)
                if args.stream:
                    # decode the whole continuation each time: a multi-byte character can span tokens
                    text = enc.decode(new_tokens)
                    print(text[len(enc.decode(new_tokens[:-1])):], end="", flush=True)
        if not args.stream:
            print(enc.decode(new_tokens), end="")
        seconds = time.time() - started
        print(f"\n[{len(new_tokens)} tokens in {seconds:.2f}s, {len(new_tokens) / max(seconds, 1e-9):.1f} tokens/s]",
              file=sys.stderr)
    print()


if __name__ == "__main__":
    run_main(main)
