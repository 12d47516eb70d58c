"""Quality per compute: recipes side by side, each trained for the same wall-clock on real text.

    python bench_budget.py --train_text=train.txt --held_out=val.txt --minutes=10 --cores=1 \\
        --recipe "GPT-2 vocabulary, 4 x 128=--vocab_size=0 --n_layer=4 --n_head=4 --n_embd=128" \\
        --recipe "own 4,096, 4 x 128=--vocab_size=4096 --n_layer=4 --n_head=4 --n_embd=128"

A recipe is NAME=FLAGS: train.py flags (preset files too, applied first so that the bench's own
data, run folder and budget win), plus --vocab_size=N for data whose vocabulary of N tokens is
learned from the training text (0: GPT-2's). The data is prepared once per vocabulary (prepare.py
--input TRAIN --val_input HELD_OUT, into --work), so every recipe learns from the same text and
is measured on the same held-out text, which no run sees.

Each run trains with --max_minutes=MINUTES (training time: start-up and evaluation not counted),
on --threads threads, pinned to --cores with taskset where given (so that two benches on two
cores do not share one), evaluating only at the end. Then eval.py reads its final weights over
the whole held-out text, and the first as many tokens of the training text: their gap shows how
much of the training text it has learned by heart. With --stories, the story check of
bench_stories.py on its stories. A row per recipe: steps, tokens/s, epochs of the training text
(a user's full TinyStories run sees a few percent of one), held-out and training bits per byte,
and the machine's load during the run (cores busy, all processes: more than the runs' own
threads means something else slowed them).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from common import ArgumentParser, UserError, run_main

ROOT = os.path.dirname(os.path.abspath(__file__))
RUN_FLAGS = ["--device=cpu", "--compile=false", "--dtype=float32", "--eval_interval=100000000",
             "--checkpoint_interval=100000000", "--max_iters=100000000", "--log_interval=100"]


def script(name, *args, threads=1, cores=None, capture=True):
    command = [sys.executable, os.path.join(ROOT, name), *map(str, args)]
    if cores:
        command = ["taskset", "-c", cores] + command
    result = subprocess.run(command, capture_output=capture, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode:
        raise UserError(f"{shlex.join(command)} failed: {(result.stderr or '').strip().splitlines()[-1:]}")
    return result.stdout


def prepare(args, vocab_size):
    """The data folder for vocab_size (0: GPT-2's), made once."""
    folder = os.path.join(args.work, f"data-{vocab_size or 'gpt2'}")
    flags = [f"--vocab_size={vocab_size}"] if vocab_size else []
    script("prepare.py", "--input", *args.train_text.split(","), "--val_input", args.held_out, "--out_dir", folder,
           *flags, threads=os.cpu_count())
    return folder


def bits_per_byte(out_dir, data_dir, split, max_tokens=0, cores=None):
    out = script("eval.py", f"--checkpoint={out_dir}/ckpt.pt", f"--data_dir={data_dir}", f"--split={split}",
                 "--device=cpu", f"--max_tokens={max_tokens}", cores=cores)
    return float(out.split(" bits/byte")[0].rsplit("| ", 1)[1])


def run_recipe(args, name, flags):
    vocab = [f for f in flags if f.startswith("--vocab_size=")]
    vocab_size = int(vocab[-1].split("=")[1]) if vocab else 0
    flags = [f for f in flags if not f.startswith("--vocab_size=")]
    data_dir = prepare(args, vocab_size)
    out_dir = os.path.join(args.work, "runs", "".join(c if c.isalnum() else "-" for c in name))
    shutil.rmtree(out_dir, ignore_errors=True)
    from bench import cpu_seconds

    started, busy_before = time.time(), cpu_seconds()[0]
    presets = [flag for flag in flags if flag.endswith(".py")]  # first: the bench's settings override theirs
    script("train.py", *presets, *RUN_FLAGS, f"--data_dir={data_dir}", f"--out_dir={out_dir}",
           *[flag for flag in flags if flag not in presets], f"--max_minutes={args.minutes}", threads=args.threads,
           cores=args.cores)
    load = (cpu_seconds()[0] - busy_before) / (time.time() - started)  # cores busy, this run included
    import torch  # here: the runs above start without it in this process's memory

    state = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    cfg = state["config"]
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    tokens = state["step"] * cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"]
    # the LM head is the token embedding (tied): counted once
    params = sum(v.numel() for k, v in state["model"].items() if "wpe" not in k and k != "lm_head.weight")
    row = {"recipe": name, "vocab": vocab_size or 50257, "params_M": params / 1e6,
           "steps": state["step"], "tokens_per_s": tokens / state["train_seconds"],
           "epochs": tokens / meta["splits"]["train"]["tokens"],
           "held_out_bpb": bits_per_byte(out_dir, data_dir, "validation", cores=args.cores),
           "train_bpb": bits_per_byte(out_dir, data_dir, "train", meta["splits"]["validation"]["tokens"], args.cores),
           "load": load}
    if args.stories:
        out = script("bench_stories.py", f"--checkpoint={out_dir}/ckpt.pt", f"--data_dir={data_dir}",
                     f"--num_stories={args.stories}", "--label=this", "--no_record", cores=args.cores)
        row["stories"] = next(line for line in out.splitlines() if line.startswith("| this |"))
        row["samples"] = out.split("Three stories, unedited:", 1)[1].strip()
    print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                     if k not in ("stories", "samples")), flush=True)
    return row


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--train_text", required=True, help="the text to learn from (TinyStories .txt layout); "
                                                            "several files comma-separated")
    parser.add_argument("--held_out", required=True, help="text to measure on, which no run learns from")
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes of every run")
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME=FLAGS",
                        help="a name and its train.py flags (--vocab_size=N: an own vocabulary); repeat for each")
    parser.add_argument("--threads", type=int, default=1, help="threads of each run")
    parser.add_argument("--cores", help="taskset core list for the runs, e.g. 1 or 0,1 (default: not pinned)")
    parser.add_argument("--stories", type=int, default=0, help="also the story check on this many stories (0: no)")
    parser.add_argument("--work", default=os.path.join(ROOT, "bench-budget"), help="the folder for data and runs")
    parser.add_argument("--key", default="budget", help="the section of --output the results replace")
    parser.add_argument("--title", default="Quality per compute", help="the section's heading, if it is new")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not record them")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the results file")
    args = parser.parse_args()
    recipes = []
    for recipe in args.recipe:
        name, sep, flags = recipe.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--recipe {recipe!r}: write it as NAME=FLAGS, e.g. \"small=--n_layer=2\"")
        recipes.append((name.strip(), shlex.split(flags)))
    if args.minutes <= 0:
        raise UserError(f"--minutes={args.minutes} must be positive")
    for path in [*args.train_text.split(","), args.held_out]:
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist")
    started = time.time()
    rows = [run_recipe(args, name, flags) for name, flags in recipes]
    report(args, rows, time.time() - started)


def report(args, rows, seconds):
    from bench import machine, publish

    pinned = f", pinned to core(s) {args.cores}" if args.cores else ""
    details = (f"{machine()}; each run {args.minutes:g} minutes of training on {args.threads} thread(s){pinned}; "
               f"{seconds / 60:.0f} min in all")
    lines = ["| recipe | vocabulary | parameters (M, no position table) | steps | tokens/s | epochs | "
             "held-out bits/byte | training-text bits/byte | machine load (cores busy) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['vocab']:,} | {r['params_M']:.2f} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
              f"{r['epochs']:.2f} | {r['held_out_bpb']:.4f} | {r['train_bpb']:.4f} | {r['load']:.1f} |" for r in rows]
    if args.stories:
        lines += ["", "Story check (bench_stories.py, final weights):", "",
                  "| run | held-out bits/byte | stories that end | repeated 4-grams | 8-grams copied from training | "
                  "longest copy (words) | distinct-2 | words per story |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} |" + r["stories"].split("|", 2)[2] for r in rows]
        for r in rows:
            lines += ["", f"Stories of {r['recipe']}:", "", r["samples"]]
    publish("bench_budget.py", details, "\n".join(lines), args.output, args.key, args.title, args.no_record)


if __name__ == "__main__":
    run_main(main)
