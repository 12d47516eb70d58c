"""Measure the project's speed figures and record them in BENCHMARKS.md.

    python bench.py                          # CPU: every section, about 2 minutes on 2 cores
    python bench.py --device=cuda            # GPU: bf16 autocast, torch.compile, fused AdamW, micro-batch 256 (presets/gpu.py)
    python bench.py --sections=train,sample  # some of: ceiling, train, sample, prepare, plain
    python bench.py --quick --no_record      # a smoke test: fewer repeats, small inputs, nothing recorded

Sections (each compared with its target, the TARGET_* constants below):
  ceiling  the matmul ceiling: every matmul of a training step of the default model (forward,
           input gradient, weight gradient of each Linear and the LM head) timed alone, in the
           layout autograd uses; the ceiling is the fastest of them (the strictest choice: a step
           made of these matmuls as laid out, FLOP-weighted, is slower, and is printed too).
  train    the real training step of train.py (forward, backward, gradient clipping, AdamW) at
           the default model: tokens/s, FLOP/s by model.flops_per_token(), and MFU against the
           ceiling measured in the same run.
  sample   200 new tokens from a 4-token prompt: one greedy story without the KV cache (float32) and
           with it (float32; sample.py's --dtype=auto; and that with --compile, the compile timed
           apart), tokens/s and ratio; 8 stories in one batch against 1, with sample.py's defaults.
  prepare  prepare.py on synthetic stories at two sizes (>= 50 MB): bytes/s, tokens/s and the peak
           RSS of its whole process tree, against tiktoken's single-thread encode_ordinary rate.
  plain    prepare.py on one document with no separators (a book; --plain_mb, 200 MB) next to
           the same text as separated stories: bytes/s and peak RSS of each.
Speed depends on what else runs on the machine: the share of the CPUs other processes took is
recorded with each run.

BENCHMARKS.md holds the latest results by topic. Each topic this run measured (training, sampling,
prepare, plain; training and sampling per kind of device: cuda, cpu-bf16 for a CPU with bf16
instructions, cpu) replaces its own section there, between `<!-- bench: KEY -->` markers, with
the command, the machine and the date (record(), which the other bench scripts use too).
"""
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import torch

import cpu_fast_paths
import sample
from common import ArgumentParser, UserError, atomic_write, native_bf16, resolve_device, resolve_dtype, run_main, underscored
from model import GPT, GPTConfig
from tokenizer import load_gpt2
from train import train_step

ROOT = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("ceiling", "train", "sample", "prepare", "plain")
# Targets, checked in every run.
TARGET_MFU = {"cpu": 0.80, "cuda": 0.50}  # of the measured matmul ceiling
TARGET_SAMPLE_SPEEDUP = 10.0  # one greedy story: sample.py's fastest path vs no cache in float32, tokens/s
TARGET_BATCH_SPEEDUP = 5.0  # 8 stories in one batch vs 1, tokens/s
TARGET_PREPARE = 0.90  # of single-thread encode_ordinary rate x cores
TARGET_PREPARE_RSS = 1.5e9  # bytes, whole process tree
TARGET_PLAIN = 0.80  # one separator-less document: of the same text's rate with separators


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (auto picks cuda if present)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="training micro-batch (default: 32 on CPU as config.py, 256 on CUDA as presets/gpu.py)")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                        help="torch.compile the training step ('auto' = on CUDA only, as train.py)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    parser.add_argument("--prepare_mb", type=int, nargs=2, default=[50, 100], metavar=("SMALL", "LARGE"),
                        help="the two input sizes for prepare.py, in MB of text")
    parser.add_argument("--plain_mb", type=int, default=200, help="MB of text for the plain (separator-less) section")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 10/20 MB prepare inputs (smoke test)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one training step")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not write BENCHMARKS.md")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="the file whose sections the results replace")
    parser.add_argument("--note", default="", help="a remark recorded with the results (what was changed, why)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise UserError(f"--sections={args.sections!r}: choose from {', '.join(SECTIONS)}")
    if "train" in sections and "ceiling" not in sections:
        sections.insert(0, "ceiling")  # MFU needs the ceiling of this run
    args.sections = [s for s in SECTIONS if s in sections]
    if args.quick and args.prepare_mb == [50, 100]:
        args.prepare_mb = [10, 20]
    if args.quick and args.plain_mb == 200:
        args.plain_mb = 20
    if min(args.prepare_mb + [args.plain_mb]) < 1:
        raise UserError("--prepare_mb and --plain_mb sizes must be at least 1")
    return args


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def best_time(fn, repeats, device):
    """Seconds of the fastest of `repeats` calls of fn, after one untimed warm-up call."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


# ----------------------------------------------------------------------------- ceiling

def step_matmuls(config, tokens):
    """(name, M, K, N, count) of every matmul in one training step: each Linear's forward x @ W.T,
    input gradient dy @ W and weight gradient dy.T @ x, and the same three for the LM head."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    linears = [("attn.c_attn", C, 3 * C, L), ("attn.c_proj", C, C, L), ("mlp.c_fc", C, 4 * C, L),
               ("mlp.c_proj", 4 * C, C, L), ("lm_head", C, V, 1)]
    shapes = []
    for name, fan_in, fan_out, count in linears:
        shapes += [(f"{name} fwd", tokens, fan_in, fan_out, count), (f"{name} dx", tokens, fan_out, fan_in, count),
                   (f"{name} dW", fan_out, tokens, fan_in, count)]
    return shapes


def bench_ceiling(config, tokens, device, dtype, repeats):
    """FLOP/s of each step matmul alone: (the fastest, the FLOP-weighted rate, per-shape rows)."""
    total_flops = total_seconds = 0.0
    rows = []
    for name, M, K, N, count in step_matmuls(config, tokens):
        # operands as autograd has them: transposed views for dW (dy.T @ x) and fwd (x @ W.T)
        a = (torch.randn(K, M, device=device, dtype=dtype).t() if name.endswith("dW")
             else torch.randn(M, K, device=device, dtype=dtype))
        b = (torch.randn(N, K, device=device, dtype=dtype).t() if name.endswith("fwd")
             else torch.randn(K, N, device=device, dtype=dtype))
        out = torch.empty(M, N, device=device, dtype=dtype)
        seconds = best_time(lambda: torch.mm(a, b, out=out), repeats, device)
        flops = 2 * M * K * N
        rows.append((name, M, K, N, flops / seconds))
        total_flops += flops * count
        total_seconds += seconds * count
    return max(rate for *_, rate in rows), total_flops / total_seconds, rows


# ----------------------------------------------------------------------------- train

def bench_train(device, args, ceiling, weighted):
    """Tokens/s and MFU of train.py's own train_step at the default model, on random tokens."""
    device_type = device.split(":")[0]
    cuda = device_type == "cuda"
    batch_size = args.batch_size
    use_compile = args.compile == "true" or (args.compile == "auto" and cuda)
    dtype = torch.bfloat16 if cuda else torch.float32  # as presets/gpu.py and config.py on CPU
    torch.manual_seed(0)
    config = GPTConfig()  # the default model, dropout 0.1 included, as train.py builds it
    model = GPT(config).to(device).train()
    cpu_fast_paths.enable(model, device, dtype, use_compile)  # as train.py
    optimizers = {"adamw": model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), device_type)}  # config.py's
    step_model = torch.compile(model) if use_compile else model
    autocast = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device_type, enabled=False)  # bf16 and fp32 need no loss scaling
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    same_batch = lambda micro_step: (x, y)  # noqa: E731

    def step():
        start = time.perf_counter()
        train_step(step_model, optimizers, scaler, same_batch, 1, autocast, grad_clip=1.0)  # config.py's grad_clip
        synchronize(device)
        return time.perf_counter() - start

    warmup, steps = (3, 10) if cuda else (1, 2 if args.quick else 4)
    for _ in range(warmup):  # compiles, and lets the allocator and caches settle
        step()
    seconds = sum(step() for _ in range(steps))
    tokens_per_s = steps * batch_size * config.block_size / seconds
    flops = model.flops_per_token() * tokens_per_s
    peak_memory = torch.cuda.max_memory_allocated(device) if cuda else None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            step()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
    return {"batch_size": batch_size, "compile": use_compile, "dtype": "bf16 autocast" if cuda else "fp32",
            "tokens_per_s": tokens_per_s, "flops": flops, "mfu": flops / ceiling, "mfu_weighted": flops / weighted,
            "step_ms": 1e3 * seconds / steps, "peak_memory": peak_memory}


# ----------------------------------------------------------------------------- sample

def learn_a_cycle(model, steps, window, batch_size=4, learning_rate=1e-3, cycle_length=23, seed=0):
    """Train `model` in place for `steps` AdamW steps to continue a sequence of cycle_length distinct
    random tokens repeated over and over; return that sequence.

    Its greedy continuation is then the cycle, decided by clear margins: an untrained model's
    likeliest tokens are near ties, which any change of rounding (bf16, another batch size) flips.
    """
    generator = torch.Generator().manual_seed(seed)
    cycle = torch.randperm(model.config.vocab_size, generator=generator)[:cycle_length]
    sequence = cycle.repeat((2 * model.config.block_size) // cycle_length + 2)
    device = model.lm_head.weight.device
    optimizer = model.configure_optimizer(0.0, learning_rate, (0.9, 0.95), device.type)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(sequence) - window, (batch_size,), generator=generator).tolist()
        x = torch.stack([sequence[s:s + window] for s in starts]).to(device)
        y = torch.stack([sequence[s + 1:s + window + 1] for s in starts]).to(device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return sequence


def bench_sample(device, quick):
    """Tokens/s of writing 200 new tokens after a 4-token prompt with the default model: one greedy
    story without the KV cache (float32: the reference), with it in float32 and in sample.py's
    --dtype=auto, and that with --compile; then sample.py's defaults (temperature 0.8, top-k 200,
    --dtype=auto, end-of-text ignored so that every story is 200 tokens) for 1 story and for 8 in
    one batch, eager and with --compile.

    The model first learns for a few steps to continue a repeating sequence (learn_a_cycle), so
    that "the same greedy tokens" in float32 and bf16 is a meaningful check; the speed does not
    depend on the weights."""
    dtype = resolve_dtype("auto", device, generating=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig()).to(device)
    cpu_fast_paths.enable(model, device)  # as train.py, for the few training steps
    sequence = learn_a_cycle(model, steps=20, window=model.config.block_size)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def model_in(dtype, compile=False):  # the same weights, ready as sample.py makes them
        model = GPT(GPTConfig()).to(device)
        model.load_state_dict(weights)
        return sample.prepare_for_sampling(model, device, dtype, compile)

    reference, fast = model_in(torch.float32), model_in(dtype)
    prompt = sequence[None, 5:9].to(device)
    new_tokens, repeats = 200, 1 if quick else 3

    def greedy(model, kv_cache):
        return model.generate(prompt, new_tokens, temperature=0, kv_cache=kv_cache)

    def stories(model, n):
        torch.manual_seed(1)
        return sample.generate_stories(model, prompt[0].tolist(), n, new_tokens, temperature=0.8, top_k=200,
                                       eot_token=None)

    uncached = new_tokens / best_time(lambda: greedy(reference, False), repeats, device)
    cached_fp32 = new_tokens / best_time(lambda: greedy(reference, True), repeats, device)
    cached = new_tokens / best_time(lambda: greedy(fast, True), repeats, device)
    one = new_tokens / best_time(lambda: stories(fast, 1), repeats, device)
    batch = 8 * new_tokens / best_time(lambda: stories(fast, 8), repeats, device)
    same = torch.equal(greedy(fast, True), greedy(reference, False))  # past block_size too
    compiled = model_in(dtype, compile=True)
    compile_seconds = sample.compile_decode_step(compiled, batch_size=1)
    cached_compiled = new_tokens / best_time(lambda: greedy(compiled, True), repeats, device)
    same_compiled = torch.equal(greedy(compiled, True), greedy(reference, False))
    one_compiled = new_tokens / best_time(lambda: stories(compiled, 1), repeats, device)
    batch_compiled = 8 * new_tokens / best_time(lambda: stories(compiled, 8), repeats, device)  # compiles for 8 first
    # A cached token reads every weight once (the tied embedding is the LM head): at the memory
    # bandwidth, that is the most tokens/s one story can reach.
    weight_bytes = sum(p.numel() * p.element_size() for p in fast.parameters())
    buffer = torch.ones(100_000_000, dtype=torch.float32, device=device)
    bandwidth = buffer.numel() * buffer.element_size() / best_time(buffer.sum, 5, device)
    return {"dtype": str(dtype).removeprefix("torch."), "uncached": uncached, "cached_fp32": cached_fp32,
            "cached": cached, "speedup": cached / uncached, "greedy_identical": same, "one": one, "batch": batch,
            "compile_seconds": compile_seconds, "cached_compiled": cached_compiled,
            "compiled_speedup": cached_compiled / uncached, "compiled_identical": same_compiled,
            "one_compiled": one_compiled, "batch_compiled": batch_compiled,
            "batch_speedup": batch / one, "weight_bytes": weight_bytes, "bandwidth": bandwidth,
            "bound": bandwidth / weight_bytes}


# ----------------------------------------------------------------------------- prepare

WORDS = ("once upon a time there was little girl named Lily she liked to play in the park with her dog Max one day "
         "they found big red ball under tree happy said mom look at this can we go home now Tom boy cat bird sun "
         "sky friends went down hill ran fast jumped laughed and played all day long then it started rain so got "
         "wet cold but did not care because were together after that ate cake drank milk slept bed dream about "
         "fun adventure forest river fish swim water duck frog green grass flower pretty smell nice mommy daddy "
         "hug kiss love toy car box hat shoe sad cry help friend share kind good bad lesson learned always never "
         "remember teacher school bus garden moon star night light dark scared brave smiled").split()


SYLLABLES = "ba be bi bo bu da de do ka ki ko la li lo ma mi mo na ni no pa pi po ra ri ro sa so ta ti to zu fli gri plo sna tro".split()


def write_story_file(path, megabytes, seed=0, separator="\n<|endoftext|>\n"):
    """A TinyStories-layout .txt of about `megabytes` MB: sentences of children's words, made-up
    names and dialogue (0.26 GPT-2 tokens per byte, as real TinyStories), each story then a line
    `<|endoftext|>` (or `separator`: a blank line makes one long document)."""
    rng = random.Random(seed)

    def word():
        if rng.random() < 0.12:  # a made-up name or word: several tokens, like rarer real words
            made_up = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
            return made_up.capitalize() if rng.random() < 0.5 else made_up
        return rng.choice(WORDS)

    def sentence():
        text = " ".join(word() for _ in range(rng.randint(4, 12))).capitalize() + rng.choice(".!?.")
        return f'"{text}" said {word()}.' if rng.random() < 0.2 else text

    def story():
        sentences = [sentence() for _ in range(rng.randint(4, 14))]
        return " ".join(sentences) if rng.random() < 0.7 else "\n\n".join(sentences)

    pool = [story() + separator for _ in range(4000)]  # tokenizing cost does not depend on repeats
    target, written = megabytes * 10 ** 6, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            chunk = "".join(rng.choices(pool, k=1000))
            f.write(chunk)
            written += len(chunk)
    return pool


def tree_rss(pid):
    """Resident bytes of process `pid` and all its descendants (from /proc; 0 if it has gone)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run_prepare(text_path, out_dir, *more_args):
    """Run prepare.py on one .txt; (seconds, peak RSS of its process tree, meta.json)."""
    command = [sys.executable, os.path.join(ROOT, "prepare.py"), "--input", text_path, "--out_dir", out_dir, "--force",
               *more_args]
    start = time.perf_counter()
    env = {**os.environ, "HF_DATASETS_CACHE": os.path.join(out_dir, "hf-cache")}  # no cache left behind
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0

    def watch():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"prepare.py failed:\n{stderr[-2000:]}")
    with open(os.path.join(out_dir, "meta.json")) as f:
        return seconds, peak, json.load(f)


def bench_prepare(sizes_mb):
    """prepare.py's bytes/s and peak RSS at two input sizes, and tiktoken's single-thread rate."""
    enc = load_gpt2()
    work = tempfile.mkdtemp(prefix="bench-prepare-")
    pool = write_story_file(os.path.join(work, "probe.txt"), 0)  # the stories the inputs are made of
    # single-thread baseline: encode_ordinary per story, as prepare.py's workers see them
    stories = [s.split("\n<|endoftext|>")[0].strip() for s in pool] * 3
    text_bytes = sum(len(s.encode("utf-8")) for s in stories)
    seconds = best_time(lambda: [enc.encode_ordinary(s) for s in stories], 2, "cpu")
    single = text_bytes / seconds
    cores = os.cpu_count()
    runs = []
    for mb in sorted(sizes_mb):
        text_path = os.path.join(work, f"stories_{mb}mb.txt")
        write_story_file(text_path, mb)
        seconds, peak, meta = run_prepare(text_path, os.path.join(work, f"data_{mb}mb"))
        splits = meta["splits"].values()
        nbytes, tokens = sum(s["text_bytes"] for s in splits), sum(s["tokens"] for s in splits)
        runs.append({"mb": mb, "seconds": seconds, "bytes_per_s": nbytes / seconds, "tokens_per_s": tokens / seconds,
                     "peak_rss": peak, "bytes": nbytes})
        os.remove(text_path)
    subprocess.run(["rm", "-rf", work])
    small, large = runs[0], runs[-1]
    # the rate once running: what the larger input costs beyond the smaller (startup cancels out)
    marginal = (large["bytes"] - small["bytes"]) / max(large["seconds"] - small["seconds"], 1e-9)
    return {"single_thread": single, "cores": cores, "target_rate": TARGET_PREPARE * single * cores,
            "runs": runs, "marginal": marginal}


def bench_plain(megabytes):
    """prepare.py on one separator-less document of `megabytes` MB and on the same text as stories."""
    work = tempfile.mkdtemp(prefix="bench-plain-")
    runs = {}
    for layout, separator in (("stories", "\n<|endoftext|>\n"), ("one document", "\n\n")):
        text_path = os.path.join(work, "input.txt")
        write_story_file(text_path, megabytes, seed=1, separator=separator)  # same seed: the same stories
        val_path = os.path.join(work, "val.txt")
        write_story_file(val_path, 1, seed=2)
        seconds, peak, meta = run_prepare(text_path, os.path.join(work, "data"), "--val_input", val_path)
        train = meta["splits"]["train"]
        runs[layout] = {"seconds": seconds, "bytes_per_s": train["text_bytes"] / seconds, "peak_rss": peak,
                        "documents": train["stories"], "tokens": train["tokens"]}
        os.remove(text_path)
    subprocess.run(["rm", "-rf", work])
    runs["ratio"] = runs["one document"]["bytes_per_s"] / runs["stories"]["bytes_per_s"]
    return runs


# ----------------------------------------------------------------------------- report

def machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if torch.cpu.get_capabilities().get(flag)]
    text = (f"{name} ({', '.join(bf16) if bf16 else 'no avx512_bf16/amx_bf16: bf16 emulated'}), {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def device_kind(device):
    """'cuda', 'cpu-bf16' (a CPU with bf16 instructions) or 'cpu': their figures differ, so each
    kind has its own sections in BENCHMARKS.md."""
    kind = device.split(":")[0]
    return "cpu-bf16" if kind == "cpu" and native_bf16("cpu") else kind


# Flags that say where the results go, not what was measured (True: the flag takes a value).
UNRECORDED_FLAGS = {"--output": True, "--note": True, "--no_record": False, "--work": True, "--plot": True}


def recorded_command(script, argv):
    """`python SCRIPT ARGS` as BENCHMARKS.md shows it: without UNRECORDED_FLAGS (and their values)."""
    shown, skip = [], False
    for arg in argv:
        name = underscored(arg).split("=", 1)[0]
        if skip:
            skip = False
        elif name in UNRECORDED_FLAGS:
            skip = UNRECORDED_FLAGS[name] and "=" not in arg
        else:
            shown.append(arg)
    return shlex.join(["python", script] + shown)


def results_text(command, details, body):
    """One run's results as BENCHMARKS.md shows them: the date, the command, `details` (the machine,
    the load, the settings), then `body` (its tables)."""
    return f"{datetime.datetime.now():%Y-%m-%d %H:%M}, `{command}`: {details}\n\n{body.strip()}\n"


def record(path, key, title, text):
    """Put `text` into the section `key` of the results file at `path` (BENCHMARKS.md), replacing
    what its markers held; a file without that section gets it at its end, under the heading
    `title`. The rest of the file stays as it was, byte for byte."""
    begin, end = f"<!-- bench: {key} -->", f"<!-- /bench: {key} -->"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Benchmarks\n"
    if old.count(begin) > 1:
        raise UserError(f"{path} has the section {begin} more than once; remove all but one")
    start = old.find(begin)
    if start >= 0:
        stop = old.find(end, start)
        if stop < 0:
            raise UserError(f"{path}: the section {begin} has no end marker {end}; add it")
        new = old[:start] + f"{begin}\n{text}" + old[stop:]
    else:
        new = old + ("" if old.endswith("\n") else "\n") + f"\n## {title}\n\n{begin}\n{text}{end}\n"
    atomic_write(path, lambda f: f.write(new.encode("utf-8")))


def publish(script, details, body, output, key, title, no_record):
    """Print one run's results (results_text, the command as `python SCRIPT` and this process's
    arguments) and, unless no_record, record them in section `key` of `output`."""
    text = results_text(recorded_command(script, sys.argv[1:]), details, body)
    print(text)
    if not no_record:
        record(output, key, title, text)
        print(f"recorded in {output}, section {key}")


def cpu_seconds():
    """(CPU seconds used by all processes on the machine, by this process and its children)."""
    import resource

    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    return busy, own


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    args = parse_args(sys.argv[1:])
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py: fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    started, cpu_before = time.time(), cpu_seconds()
    config = GPTConfig()
    args.batch_size = batch_size = args.batch_size or (256 if cuda else 32)  # config.py's / presets/gpu.py's
    rows = {}  # topic -> its table rows: figure | value | target | verdict
    print(f"bench on {device}: {machine()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}", flush=True)

    ceiling = weighted = None
    if "ceiling" in args.sections:
        lines = rows.setdefault("train", [])  # the ceiling is the training step's yardstick
        dtype = torch.bfloat16 if cuda else torch.float32
        ceiling, weighted, shapes = bench_ceiling(config, batch_size * config.block_size, device, dtype, 3 if cuda or not args.quick else 1)
        for name, M, K, N, rate in shapes:
            print(f"  matmul {name:18s} ({M}x{K})@({K}x{N}): {rate / 1e9:8.1f} GFLOP/s")
        print(f"ceiling: {ceiling / 1e9:.1f} GFLOP/s, the fastest shape (FLOP-weighted over the step's "
              f"matmuls: {weighted / 1e9:.1f})", flush=True)
        lines.append(("matmul ceiling, " + ("bf16" if cuda else "fp32") + ", fastest of the step's shapes",
                      f"{ceiling / 1e9:,.1f} GFLOP/s", "", ""))

    if "train" in args.sections:
        r = bench_train(device, args, ceiling, weighted)
        detail = f"{r['step_ms']:,.0f} ms per step" + (
            f", peak memory {r['peak_memory'] / 2**30:.1f} GiB" if r["peak_memory"] is not None else "")
        print(f"train: {r['tokens_per_s']:,.0f} tokens/s, {r['flops'] / 1e9:,.1f} GFLOP/s, MFU {100 * r['mfu']:.1f}% "
              f"of the ceiling ({detail})", flush=True)
        target = TARGET_MFU["cuda" if cuda else "cpu"]
        lines.append((f"train step, batch {r['batch_size']}x{config.block_size}, {r['dtype']}, compile {r['compile']}",
                      f"{r['tokens_per_s']:,.0f} tokens/s, {r['flops'] / 1e9:,.1f} GFLOP/s ({detail})", "", ""))
        lines.append(("train MFU vs the measured ceiling", f"{100 * r['mfu']:.1f}%", f">= {100 * target:.0f}%",
                      verdict(r["mfu"] >= target)))
        lines.append(("train MFU vs the FLOP-weighted mix of the step's matmul shapes (for reference)",
                      f"{100 * r['mfu_weighted']:.1f}% of {weighted / 1e9:,.1f} GFLOP/s", "", ""))

    if "sample" in args.sections:
        lines = rows.setdefault("sample", [])
        r = bench_sample(device, args.quick)
        print(f"sample: one greedy story {r['cached']:,.1f} tokens/s cached in {r['dtype']}, {r['cached_fp32']:,.1f} "
              f"cached in float32, {r['uncached']:,.1f} uncached, {r['speedup']:.1f}x; greedy identical: "
              f"{r['greedy_identical']}; compiled {r['cached_compiled']:,.1f} tokens/s ({r['compiled_speedup']:.1f}x, "
              f"identical: {r['compiled_identical']}, compiled in {r['compile_seconds']:.1f} s); 8 stories in a batch "
              f"{r['batch']:,.1f} tokens/s, 1 story {r['one']:,.1f}, {r['batch_speedup']:.1f}x", flush=True)
        print(f"  bound by memory: {r['weight_bytes'] / 1e6:.0f} MB of weights per token at {r['bandwidth'] / 1e9:.1f} GB/s "
              f"= {r['bound']:,.0f} tokens/s at most, {r['bound'] / r['uncached']:.1f}x the uncached rate", flush=True)
        lines.append(("sample 200 tokens, prompt 4, greedy, no cache, float32", f"{r['uncached']:,.1f} tokens/s", "", ""))
        lines.append(("sample 200 tokens, prompt 4, greedy, KV cache, float32", f"{r['cached_fp32']:,.1f} tokens/s",
                      "", ""))
        lines.append((f"sample 200 tokens, prompt 4, greedy, KV cache, {r['dtype']} (--dtype=auto)",
                      f"{r['cached']:,.1f} tokens/s", "", ""))
        def speedup_row(what, speedup, identical):
            return (f"sample speed-up, {what} in {r['dtype']} vs no cache in float32",
                    f"{speedup:.1f}x (greedy tokens identical: {identical})", f">= {TARGET_SAMPLE_SPEEDUP:.0f}x",
                    verdict(speedup >= TARGET_SAMPLE_SPEEDUP and identical))

        lines.append(speedup_row("KV cache", r["speedup"], r["greedy_identical"]))
        lines.append((f"sample 200 tokens, prompt 4, greedy, KV cache, {r['dtype']}, compiled decode step (--compile)",
                      f"{r['cached_compiled']:,.1f} tokens/s (after {r['compile_seconds']:.1f} s compiling)", "", ""))
        lines.append(speedup_row("compiled KV-cache step", r["compiled_speedup"], r["compiled_identical"]))
        lines.append(("the memory bound of one cached token (weights read / bandwidth of reading 400 MB)",
                      f"{r['weight_bytes'] / 1e6:.0f} MB / {r['bandwidth'] / 1e9:.1f} GB/s = at most {r['bound']:,.0f} "
                      f"tokens/s, {r['bound'] / r['uncached']:.1f}x the uncached rate", "", ""))
        lines.append((f"sample.py defaults (T 0.8, top-k 200, {r['dtype']}), 200 tokens, 1 story",
                      f"{r['one']:,.1f} tokens/s", "", ""))
        lines.append(("the same, 8 stories in one batch", f"{r['batch']:,.1f} tokens/s", "", ""))
        lines.append(("batch speed-up, 8 stories vs 1", f"{r['batch_speedup']:.1f}x", f">= {TARGET_BATCH_SPEEDUP:.0f}x",
                      verdict(r["batch_speedup"] >= TARGET_BATCH_SPEEDUP)))
        lines.append(("sample.py defaults with --compile: 1 story / 8 stories in one batch",
                      f"{r['one_compiled']:,.1f} / {r['batch_compiled']:,.1f} tokens/s", "", ""))

    if "prepare" in args.sections:
        lines = rows.setdefault("prepare", [])
        r = bench_prepare(args.prepare_mb)
        lines.append(("tiktoken encode_ordinary, 1 thread, per story", f"{r['single_thread'] / 1e6:.1f} MB/s", "", ""))
        for run in r["runs"]:
            print(f"prepare {run['mb']} MB: {run['seconds']:.1f} s, {run['bytes_per_s'] / 1e6:.1f} MB/s, "
                  f"{run['tokens_per_s'] / 1e6:.2f} M tokens/s, peak RSS {run['peak_rss'] / 1e9:.2f} GB", flush=True)
            lines.append((f"prepare.py, {run['mb']} MB of text, whole run",
                          f"{run['bytes_per_s'] / 1e6:.1f} MB/s, {run['tokens_per_s'] / 1e6:.2f} M tokens/s",
                          f">= {r['target_rate'] / 1e6:.1f} MB/s", verdict(run["bytes_per_s"] >= r["target_rate"])))
            lines.append((f"prepare.py, {run['mb']} MB, peak RSS of the process tree", f"{run['peak_rss'] / 1e9:.2f} GB",
                          f"<= {TARGET_PREPARE_RSS / 1e9:.1f} GB", verdict(run["peak_rss"] <= TARGET_PREPARE_RSS)))
        print(f"prepare: marginal {r['marginal'] / 1e6:.1f} MB/s; target {r['target_rate'] / 1e6:.1f} MB/s "
              f"(90% of {r['single_thread'] / 1e6:.1f} MB/s x {r['cores']} cores)", flush=True)
        lines.append(("prepare.py, marginal rate (larger minus smaller run)", f"{r['marginal'] / 1e6:.1f} MB/s",
                      f">= {r['target_rate'] / 1e6:.1f} MB/s", verdict(r["marginal"] >= r["target_rate"])))

    if "plain" in args.sections:
        lines = rows.setdefault("plain", [])
        r = bench_plain(args.plain_mb)
        for layout in ("stories", "one document"):
            run = r[layout]
            print(f"plain, {args.plain_mb} MB as {layout} ({run['documents']:,} documents): {run['seconds']:.1f} s, "
                  f"{run['bytes_per_s'] / 1e6:.1f} MB/s, peak RSS {run['peak_rss'] / 1e9:.2f} GB", flush=True)
            lines.append((f"prepare.py, {args.plain_mb} MB as {layout} ({run['documents']:,} documents)",
                          f"{run['bytes_per_s'] / 1e6:.1f} MB/s, {run['tokens']:,} tokens, peak RSS "
                          f"{run['peak_rss'] / 1e9:.2f} GB", "", ""))
        flat = r["one document"]["peak_rss"] <= max(1.25 * r["stories"]["peak_rss"], r["stories"]["peak_rss"] + 2e8)
        lines.append(("prepare.py, one document vs stories: rate", f"{100 * r['ratio']:.0f}%",
                      f">= {100 * TARGET_PLAIN:.0f}%", verdict(r["ratio"] >= TARGET_PLAIN)))
        lines.append(("prepare.py, one document vs stories: peak RSS", f"{r['one document']['peak_rss'] / 1e9:.2f} vs "
                      f"{r['stories']['peak_rss'] / 1e9:.2f} GB", "flat (within 25% or 0.2 GB)", verdict(flat)))

    seconds = time.time() - started
    (busy_before, own_before), (busy_after, own_after) = cpu_before, cpu_seconds()
    # what other processes took of the CPUs while this ran: their noise is in the numbers
    foreign = max(0.0, (busy_after - busy_before) - (own_after - own_before)) / (seconds * os.cpu_count())
    details = (f"{machine()}; torch {torch.__version__}; {seconds / 60:.1f} min; other processes used "
               f"{100 * foreign:.0f}% of the CPUs meanwhile" + (f"\n\n{args.note}" if args.note else ""))
    kind = device_kind(device)
    sections = {"train": (f"train-{kind}", f"Training step ({kind})"), "sample": (f"sample-{kind}", f"Sampling ({kind})"),
                "prepare": ("prepare", "prepare.py"), "plain": ("prepare-plain", "prepare.py, one document")}
    for topic, lines in rows.items():
        body = "\n".join(["| figure | value | target | |", "|---|---|---|---|"]
                         + [f"| {' | '.join(row)} |" for row in lines])
        print()
        publish("bench.py", details, body, args.output, *sections[topic], args.no_record)


if __name__ == "__main__":
    run_main(main)
