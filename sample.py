"""Generate stories with a trained model.

    python sample.py --prompt "Once upon a time"
    python sample.py --prompt "Tom found a dog" --num_samples 8 --temperature 0.7
    python sample.py --interactive                  # one prompt per line from standard input

Loads the best weights of a run (out_dir/best_model_params.pt, with the architecture from the
config.json beside it) or any checkpoint given with --checkpoint, and the tokenizer of that run:
GPT-2's, or the tokenizer.json train.py copied beside it.

--num_samples N writes the N stories as one batch: every step computes a token for each of them
at once, far cheaper than writing them one after another (the weights are read once per step for
all of them). Each story ends at its own end-of-text token; the batch ends when all have.
"""
import functools
import os
import sys
import time

import torch

import cpu_fast_paths
from checkpoint import load_model
from common import (ArgumentParser, UserError, explain_compile_failures, resolve_device, resolve_dtype, run_main,
                    warn_if_bf16_is_emulated)
from tokenizer import EOT_TOKEN, load_run_tokenizer

DEFAULT_PROMPT = "Once upon a time"


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", help=f"text the story starts with (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--interactive", action="store_true",
                        help="load the model once, then read prompts from standard input, one per line, and "
                             "stream a story for each, until an empty line, end of input or Ctrl-C")
    parser.add_argument("--out_dir", default="out", help="the training run's folder")
    parser.add_argument("--checkpoint", help="weights to load (default: OUT_DIR/best_model_params.pt)")
    parser.add_argument("--num_samples", type=int, default=1, help="how many stories to write (as one batch)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate per story")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random")
    parser.add_argument("--top_k", type=int, default=200, help="sample from the k likeliest tokens (0 = all)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: smallest set with probability p")
    parser.add_argument("--seed", type=int, default=1337, help="random seed, for repeatable samples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="the weights' and KV cache's type while generating: auto = bfloat16 on CUDA (float16 "
                             "without bf16) and on CPUs with bf16 instructions, float32 elsewhere")
    parser.add_argument("--no_kv_cache", action="store_true", help="recompute the whole context for every token")
    parser.add_argument("--compile", nargs="?", const="true", default="false", choices=("true", "false"),
                        help="--compile=true (or --compile) compiles the one-token decode step with torch.compile "
                             "(a CUDA graph on a GPU), after a compile of seconds to a minute; meant for GPUs (on a "
                             "CPU eager is faster)")
    parser.add_argument("--stream", action="store_true",
                        help="print as the stories are written (always with --interactive): token by token for "
                             "one story; for several, each story as soon as it and the ones before it are finished")
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
    # train.py's values for --compile, but no 'auto': compiling costs up to a minute, more than a few stories take
    args.compile = args.compile == "true"
    if args.compile and args.no_kv_cache:
        raise UserError("--compile compiles the KV cache's one-token decode step; leave out --no_kv_cache")
    if args.interactive and args.prompt is not None:
        raise UserError("--interactive reads the prompts from standard input; leave out --prompt")
    if args.prompt is None:
        args.prompt = DEFAULT_PROMPT
    return args


def prepare_for_sampling(model, device, dtype, compile=False):
    """Put a loaded model in the form generation uses: evaluation mode, weights (and so the KV
    cache) in `dtype`, and the CPU fast paths for it where they apply; with compile, its decode
    step compiled (see compile_decode_step)."""
    model.eval()
    model.to(dtype)
    if compile:
        # reduce-overhead: on a GPU the step is replayed as a CUDA graph, one launch instead of about
        # a hundred small kernels per token; fullgraph: a graph break would silently split the step
        # into pieces run one after another
        model.decode_step = torch.compile(model.decode_step, mode="reduce-overhead", fullgraph=True)
        model.make_kv_cache = functools.partial(make_static_kv_cache, model.make_kv_cache)
    cpu_fast_paths.enable(model, device, dtype, compiled=compile)
    return model


def make_static_kv_cache(make_kv_cache, batch_size, device):
    """A KV cache whose tensors the compiled decode step (a CUDA graph) writes into directly, not
    through copies: marked as living at fixed addresses."""
    cache = make_kv_cache(batch_size, device)
    for t in (cache.k, cache.v):
        torch._dynamo.mark_static_address(t, guard=False)
    return cache


def compile_decode_step(model, batch_size):
    """Compile model.decode_step (prepared with compile=True) for batches of batch_size stories
    now, before any story is timed, by generating a few tokens; return the seconds it took.

    Its shapes are the same at every position, so it compiles once per batch size and never again
    (tests/test_sample.py checks that no position recompiles it)."""
    started = time.time()
    # a prompt of one token, then 3 steps: the compile, and on a GPU a CUDA graph's warm-up and recording
    model.generate(torch.zeros((batch_size, 1), dtype=torch.long, device=model.lm_head.weight.device), 4,
                   temperature=0)
    return time.time() - started


def generate_stories(model, prompt_ids, num_samples, max_new_tokens, temperature=0.8, top_k=None, top_p=None,
                     kv_cache=True, eot_token=EOT_TOKEN, on_token=None):
    """Continue prompt_ids num_samples times, all in one batch; the new tokens of each story.

    A story ends at its end-of-text token eot_token (None: never), which is not included; its row of the
    batch is still computed until every story has ended (or max_new_tokens), but nothing more is
    added to it. on_token(stories, finished) is called after every step with the token lists so
    far and which of them have ended.
    """
    device = model.lm_head.weight.device
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)  # (N, T)
    stories, finished = [[] for _ in range(num_samples)], [False] * num_samples
    for step, tokens in enumerate(model.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, kv_cache)):
        for row, token in enumerate(tokens[:, 0].tolist()):
            if finished[row]:
                continue
            if token == eot_token:
                finished[row] = True
            else:
                stories[row].append(token)
        if step == max_new_tokens - 1:
            finished = [True] * num_samples
        if on_token is not None:
            on_token(stories, finished)
        if all(finished):
            break
    return stories


class StoryPrinter:
    """Prints a batch of stories as generate_stories writes them, separated by a line of dashes.

    Streaming one story prints each token as it comes; streaming several prints each story as
    soon as it and all before it have ended, so the order never changes. Without streaming
    everything is printed at the end."""

    def __init__(self, enc, prompt, num_samples, stream):
        self.enc, self.prompt, self.stream = enc, prompt, stream
        self.token_by_token = stream and num_samples == 1
        self.printed_stories = 0  # stories printed whole
        self.printed_tokens = 0  # tokens of the story being streamed token by token
        if self.token_by_token:
            print(prompt, end="", flush=True)

    def update(self, stories, finished):
        if self.token_by_token:
            story = stories[0]
            # decode the whole continuation each time: a multi-byte character can span tokens
            new = self.enc.decode(story)[len(self.enc.decode(story[:self.printed_tokens])):]
            if new:
                print(new, end="", flush=True)
                self.printed_tokens = len(story)
        elif self.stream:
            self.print_finished(stories, finished)

    def finish(self, stories):
        if self.token_by_token:
            self.update(stories, [True])
            print()
        else:
            self.print_finished(stories, [True] * len(stories))

    def print_finished(self, stories, finished):
        while self.printed_stories < len(stories) and finished[self.printed_stories]:
            if self.printed_stories:
                print("-" * 40)
            print(self.prompt + self.enc.decode(stories[self.printed_stories]), flush=True)
            self.printed_stories += 1


def fit_to_context(prompt_ids, block_size):
    """The prompt's last block_size tokens (all of them if it fits), with a note on stderr when some
    are dropped: the model cannot see further back than its context, so the story continues from
    the end of the prompt, as it would once it had written that much itself."""
    if len(prompt_ids) <= block_size:
        return prompt_ids
    print(f"note: the prompt is {len(prompt_ids)} tokens; keeping its last {block_size} (the model's context)",
          file=sys.stderr)
    return prompt_ids[-block_size:]


def write_stories(model, enc, prompt, args):
    """Generate and print args.num_samples stories for one prompt, then a speed line on stderr."""
    prompt_ids = fit_to_context(enc.encode_ordinary(prompt), model.config.block_size)
    printer = StoryPrinter(enc, prompt, args.num_samples, args.stream or args.interactive)
    started = time.time()
    stories = generate_stories(model, prompt_ids, args.num_samples, args.max_new_tokens, args.temperature,
                               args.top_k or None, args.top_p, kv_cache=not args.no_kv_cache,
                               eot_token=None if args.ignore_eot else enc.eot_token,
                               on_token=printer.update)
    seconds = time.time() - started
    printer.finish(stories)
    tokens = sum(len(story) for story in stories)
    what = f"{args.num_samples} stories, " if args.num_samples > 1 else ""
    print(f"[{what}{tokens} tokens in {seconds:.2f}s, {tokens / max(seconds, 1e-9):.1f} tokens/s]", file=sys.stderr)


def read_prompts():
    """Lines of standard input until an empty line or its end; '> ' before each when it is a terminal."""
    ask = "> " if sys.stdin.isatty() else ""
    while True:
        try:
            line = input(ask)
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def main():
    args = parse_args(sys.argv[1:])
    if not args.prompt.strip():
        raise UserError("--prompt is empty; give the story a beginning, e.g. --prompt \"Once upon a time\"")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, generating=True)
    if dtype == torch.bfloat16:
        warn_if_bf16_is_emulated(device.split(":")[0])
    checkpoint = args.checkpoint or os.path.join(args.out_dir, "best_model_params.pt")
    model = load_model(checkpoint, device)
    enc = load_run_tokenizer(checkpoint, model.config.vocab_size)  # GPT-2's, or the run's own
    prepare_for_sampling(model, device, dtype, args.compile)
    if args.compile:
        print("compiling the decode step...", file=sys.stderr, flush=True)
        with explain_compile_failures(True, "run without --compile"):
            seconds = compile_decode_step(model, args.num_samples)
        print(f"compiled in {seconds:.1f}s", file=sys.stderr)
    torch.manual_seed(args.seed)  # once: a session with the same prompts in the same order repeats itself
    if not args.interactive:
        write_stories(model, enc, args.prompt, args)
        return
    try:
        for prompt in read_prompts():
            write_stories(model, enc, prompt, args)
    except KeyboardInterrupt:  # Ctrl-C ends the session like an empty line, not as an interruption
        print()  # the shell's prompt on a line of its own


if __name__ == "__main__":
    run_main(main)
