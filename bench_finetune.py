"""Fine-tuning against training from scratch, on real text; records in BENCHMARKS.md.

    python bench_finetune.py --pretrain_text ../shared/data/tinystories_sample.txt \
        --text ../shared/data/tinyshakespeare.txt

It runs the commands a user would (prepare.py, train.py, sample.py), in the folder --work:
  1. prepare.py on both texts, a tenth of each held out for validation;
  2. pretrain: train.py from scratch on --pretrain_text for --pretrain_steps;
  3. --steps on --text, side by side: train.py from scratch (bench_optimizers.py's best AdamW
     recipe for this model: lr 1e-3, warmup 30, cosine to 1e-4), and presets/finetune.py
     --init_from=<the pretrained run> at each of --finetune_lrs (constant after its warmup);
  4. sample.py from the pretrained run and from the best fine-tune, the same prompt and seed.
The runs of step 3 run at the same time with one torch thread each, so that whatever else the
machine runs slows them alike. Their validation losses (train.py's estimate, the same windows
at every evaluation) are drawn into --plot. The results replace BENCHMARKS.md's section
"finetune" (bench.py's record()).
"""
import csv
import os
import shlex
import subprocess
import sys
import time

from bench import cpu_seconds, machine, publish
from common import ArgumentParser, UserError, run_main

ROOT = os.path.dirname(os.path.abspath(__file__))
# the model and batch of bench_optimizers.py: 4 layers x 128 wide, context 64, 12 x 64 tokens a step
MODEL = ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64", "--dropout=0.0", "--batch_size=12",
         "--gradient_accumulation_steps=1", "--device=cpu", "--compile=false", "--dtype=float32"]
SCRATCH = ["--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=30"]


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--pretrain_text", required=True, help="the text to pretrain on (a UTF-8 file)")
    parser.add_argument("--text", required=True, help="the text to fine-tune on, and to train on from scratch")
    parser.add_argument("--pretrain_steps", type=int, default=200, help="optimizer steps of the pretraining")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each run on --text")
    parser.add_argument("--finetune_lrs", default="3e-4,1e-3", help="fine-tuning learning rates to compare")
    parser.add_argument("--prompt", default="ROMEO:", help="the prompt of the samples before and after")
    parser.add_argument("--work", default="out-bench-finetune", help="folder for the data and the runs")
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "finetune.png"), help="the PNG to write")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not write BENCHMARKS.md")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="the file whose section the results replace")
    args = parser.parse_args(argv)
    try:
        args.finetune_lrs = [float(v) for v in args.finetune_lrs.split(",")]
    except ValueError:
        raise UserError(f"--finetune_lrs={args.finetune_lrs!r} must be numbers separated by commas") from None
    return args


def script(name, *args):
    """The command line of one of the project's scripts, as a user would type it."""
    return [sys.executable, os.path.join(ROOT, name), *map(str, args)]


def start(command, log_path):
    """Start a command with one torch thread, its output into log_path."""
    print("$", shlex.join(["python"] + command[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def finish(process, log_path):
    if process.wait() != 0:
        with open(log_path) as f:
            raise UserError(f"{shlex.join(process.args)} failed: {f.read()[-2000:]}")


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def steps_to_reach(target, rows):
    """The first step at which the validation loss is at most `target`, linear between two
    evaluations; None if it never is."""
    for before, after in zip(rows, rows[1:]):
        if before["val_loss"] <= target:
            return before["step"]
        if after["val_loss"] <= target:
            share = (before["val_loss"] - target) / (before["val_loss"] - after["val_loss"])
            return before["step"] + share * (after["step"] - before["step"])
    return rows[-1]["step"] if rows[-1]["val_loss"] <= target else None


def sample(out_dir, prompt):
    result = subprocess.run(script("sample.py", f"--out_dir={out_dir}", "--prompt", prompt, "--max_new_tokens=60",
                                   "--seed=1", "--dtype=float32", "--device=cpu"),
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    return result.stdout.strip() if result.returncode == 0 else f"(sample.py failed: {result.stderr.strip()})"


def plot(path, runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, rows in runs.items():
        ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], label=name, marker=".")
    ax.set_xlabel("optimizer step on the new text")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    args = parse_args(sys.argv[1:])
    started, cpu_before = time.time(), cpu_seconds()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    data = {name: os.path.join(work, f"data-{name}") for name in ("pretrain", "target")}
    for name, text in (("pretrain", args.pretrain_text), ("target", args.text)):
        log = os.path.join(work, f"prepare-{name}.log")
        finish(start(script("prepare.py", "--input", text, "--out_dir", data[name], "--val_fraction=0.1",
                            "--num_proc=1"), log), log)

    pretrained = os.path.join(work, "pretrained")
    log = os.path.join(work, "pretrained.log")
    finish(start(script("train.py", f"--data_dir={data['pretrain']}", f"--out_dir={pretrained}", *MODEL, *SCRATCH,
                        f"--max_iters={args.pretrain_steps}", f"--lr_decay_iters={args.pretrain_steps}",
                        "--eval_interval=50", "--eval_iters=10", "--overwrite=true"), log), log)

    commands = {"scratch": script("train.py", f"--data_dir={data['target']}", *MODEL, *SCRATCH,
                                  "--eval_interval=20", "--eval_iters=10")}
    for lr in args.finetune_lrs:
        commands[f"fine-tune lr {lr:g}"] = script("train.py", "presets/finetune.py", f"--init_from={pretrained}",
                                                  f"--data_dir={data['target']}", "--dropout=0.0",
                                                  f"--learning_rate={lr}", f"--min_lr={lr}")
    out_dirs = {name: os.path.join(work, name.replace(" ", "-")) for name in commands}
    processes = {name: start(command + [f"--out_dir={out_dirs[name]}", f"--max_iters={args.steps}",
                                        f"--lr_decay_iters={args.steps}", "--overwrite=true"],
                             out_dirs[name] + ".log")
                 for name, command in commands.items()}
    try:
        for name, process in processes.items():
            finish(process, out_dirs[name] + ".log")
    finally:  # one failed: stop the others
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    runs = {name: metrics(out_dir) for name, out_dir in out_dirs.items()}
    plot(args.plot, runs)

    scratch_final = runs["scratch"][-1]["val_loss"]
    best = min((name for name in runs if name != "scratch"), key=lambda name: runs[name][-1]["val_loss"])
    busy, own = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    seconds = time.time() - started
    details = (f"{machine()} (each run: 1 torch thread); {seconds / 60:.1f} min; other processes used "
               f"{100 * max(busy - own, 0) / (seconds * os.cpu_count()):.0f}% of the CPUs meanwhile. Model: "
               f"{shlex.join(MODEL)}. Pretrained {args.pretrain_steps} steps on {args.pretrain_text} (best val loss "
               f"{min(r['val_loss'] for r in metrics(pretrained)):.4f}); then {args.steps} steps on {args.text}, "
               f"the runs side by side. Loss: train.py's estimate (10 batches, the same windows every evaluation).")
    evals = [r["step"] for r in runs["scratch"]]
    shown = [s for s in evals if s in (0, 20, 40, 60, 100, 140) or s == evals[-1]]
    lines = ["| run | " + " | ".join(f"val loss @{int(s)}" for s in shown) + " | wall-clock |",
             "|---|" + "---|" * (len(shown) + 1)]
    for name, rows in runs.items():
        by_step = {r["step"]: r for r in rows}
        lines.append(f"| {name}{' (best)' if name == best else ''} | "
                     + " | ".join(f"{by_step[s]['val_loss']:.4f}" for s in shown)
                     + f" | {rows[-1]['seconds']:.0f} s |")
    lines.append("")
    for name in runs:
        if name != "scratch":
            reach = steps_to_reach(scratch_final, runs[name])
            text = f"{reach:.0f} of {args.steps}" if reach is not None else f"not within {args.steps}"
            lines.append(f"- {name}: reaches scratch's final val loss {scratch_final:.4f} at step {text}")
    publish("bench_finetune.py", details, "\n".join(lines), args.output, "finetune", "Fine-tuning", args.no_record)
    print(f"sample before (the pretrained run), prompt {args.prompt!r}:\n{sample(pretrained, args.prompt)}\n")
    print(f"sample after ({best}):\n{sample(out_dirs[best], args.prompt)}\n")
    print(f"sample of scratch:\n{sample(out_dirs['scratch'], args.prompt)}\n")
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    run_main(main)
