"""Time to quality: AdamW against Muon (--optimizer=muon) on real text; records in BENCHMARKS.md.

    python bench_optimizers.py --text ../shared/data/tinyshakespeare.txt
    python bench_optimizers.py --text FILE --steps 60 --no_record         # a quick look

The text is split 90/10 by characters and tokenized with GPT-2. Every run trains the same model
(default 4 layers x 128 wide, context 64, no dropout) from the same initial weights on the same
batches (12 x 64 tokens a step), through train.py's own make_optimizers, set_learning_rates and
train_step: linear warmup, then cosine to a tenth of the peak, the one multiplier for both
optimizers. Quality is eval.py's deterministic pass over the whole validation split.

  1. Sweep: AdamW at each of --adamw_lrs and Muon at each of --muon_lrs (the AdamW that trains
     the embeddings, biases and LayerNorms of a Muon run keeps --muon_adamw_lr), --steps each;
     validation loss every --eval_every steps. The best of each optimizer is its lowest final loss.
  2. Budgets: the best Muon with a schedule of --muon_budget x steps (the target: reach the best
     AdamW's final loss in 70% of its steps), and the best AdamW with --adamw_budget x steps
     (does AdamW reach Muon's final loss, and in how many steps).

With --archs=gpt2,modern every run of the sweep is made for each model: GPT-2's block and the
block of presets/modern.py (any presets/NAME.py of model options can be named). Phase 2 then gives
each optimizer's best run of the second model a schedule of --arch_budget x steps (0: none), and
the verdicts compare the second model with the first under each optimizer: at equal steps, the
steps and wall-clock it needs to reach the first's final loss, its loss at the first's wall-clock.

Steps to reach a loss are read from these fully decayed runs of different lengths, interpolated
linearly in loss between two budgets; the loss along one run's curve (still at a high learning
rate) would overstate them. Wall-clock is the training time alone (evaluation excluded). All
runs of a phase live in this one process and take their steps in turn, one step each, so that
whatever else the machine runs slows every run alike; the load is recorded with the results.

The results replace BENCHMARKS.md's section for this comparison on this kind of device (bench.py's
record()): optimizers-KIND for one model, A-vs-B-KIND for two, KIND being cuda, cpu-bf16 or cpu.
"""
import contextlib
import functools
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

import config
import cpu_fast_paths
from bench import cpu_seconds, device_kind, machine, publish, verdict
from common import ArgumentParser, UserError, resolve_device, run_main
from eval import evaluate
from model import GPT, GPTConfig
from tokenizer import VOCAB_SIZE, load_gpt2
from optimizers import Float32Muon, make_optimizers, set_learning_rates
from train import scratch_model_args, train_step, training_batch

ROOT = os.path.dirname(os.path.abspath(__file__))
TARGET_STEP_FRACTION = 0.70  # Muon reaches the best AdamW's final loss in at most this share of its steps
TARGET_STEP_TIME = 1.10  # Muon's wall-clock per step at most this times AdamW's


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--text", required=True, help="a UTF-8 text file, e.g. ../shared/data/tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each sweep run")
    parser.add_argument("--warmup", type=int, default=30, help="warmup steps of every run")
    parser.add_argument("--adamw_lrs", default="3e-4,1e-3,3e-3", help="AdamW peak learning rates to sweep")
    parser.add_argument("--muon_lrs", default="0.01,0.02,0.05", help="Muon peak learning rates to sweep")
    parser.add_argument("--muon_adamw_lr", type=float, default=1e-3,
                        help="peak lr of the AdamW for the embeddings, biases and LayerNorms in Muon runs")
    parser.add_argument("--muon_budget", type=float, default=TARGET_STEP_FRACTION,
                        help="the best Muon's second run has this fraction of --steps")
    parser.add_argument("--adamw_budget", type=float, default=1.5,
                        help="the best AdamW's second run has this multiple of --steps")
    parser.add_argument("--muon_dtype", default="auto", choices=config.CHOICES["muon_dtype"],
                        help="Muon's orthogonalization dtype, as train.py's knob (auto: bf16 where the device has it)")
    parser.add_argument("--archs", default="gpt2",
                        help="models to compare, comma-separated: gpt2 (GPT-2's block), or NAME for presets/NAME.py's "
                             "model options, e.g. gpt2,modern")
    parser.add_argument("--arch_budget", type=float, default=TARGET_STEP_FRACTION,
                        help="with two --archs: the second's best runs get this fraction of --steps (0: no such runs)")
    parser.add_argument("--eval_every", type=int, default=100, help="validation pass every this many sweep steps")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=128)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (float32 on either)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not write BENCHMARKS.md")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="the file whose section the results replace")
    parser.add_argument("--note", default="", help="a remark recorded with the results")
    args = parser.parse_args(argv)
    try:
        args.adamw_lrs = [float(v) for v in args.adamw_lrs.split(",")]
        args.muon_lrs = [float(v) for v in args.muon_lrs.split(",")]
    except ValueError:
        raise UserError("--adamw_lrs and --muon_lrs are comma-separated numbers, e.g. 3e-4,1e-3,3e-3") from None
    if not os.path.isfile(args.text):
        raise UserError(f"--text {args.text} does not exist")
    if args.steps < 2 or not 0 <= args.warmup < args.steps or args.eval_every < 1:
        raise UserError("need --steps >= 2, 0 <= --warmup < --steps and --eval_every >= 1")
    if not 0 < args.muon_budget <= 1 or args.adamw_budget < 1 or not 0 <= args.arch_budget < 1:
        raise UserError("need 0 < --muon_budget <= 1, --adamw_budget >= 1 and 0 <= --arch_budget < 1")
    args.archs = args.archs.split(",")
    for arch in args.archs:
        if arch != "gpt2" and not os.path.isfile(arch_preset(arch)[0]):
            raise UserError(f"--archs: no presets/{arch}.py; name gpt2 or a preset of model options, e.g. modern")
    if len(args.archs) > 2 or len(set(args.archs)) != len(args.archs):
        raise UserError("--archs takes one model, or two to compare (e.g. gpt2,modern)")
    return args


def arch_preset(arch):
    """The preset file whose model options make `arch` (none for gpt2, config.py's defaults)."""
    return [] if arch == "gpt2" else [os.path.join(ROOT, "presets", f"{arch}.py")]


# ----------------------------------------------------------------------------- data

def prepare_text(path, data_dir):
    """Split the text 90/10 by characters, tokenize both parts with GPT-2 and write train.bin and
    validation.bin (uint16, as prepare.py) into data_dir; returns the validation tokens."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --text {path} as UTF-8 text ({type(e).__name__}: {e})") from e
    enc = load_gpt2()
    cut = int(0.9 * len(text))
    tokens = {}
    for split, part in (("train", text[:cut]), ("validation", text[cut:])):
        tokens[split] = np.array(enc.encode_ordinary(part), dtype=np.uint16)
        tokens[split].tofile(os.path.join(data_dir, f"{split}.bin"))
    return tokens


# ----------------------------------------------------------------------------- runs

def new_run(args, data_dir, optimizer, lr, steps, device, arch="gpt2"):
    """A model from the seed's initial weights and its optimizers, built as train.py builds them
    from these flags: the model options of `arch`, `optimizer` at peak `lr`, a schedule over `steps`."""
    adamw_lr = lr if optimizer == "adamw" else args.muon_adamw_lr
    cfg = config.parse_args(arch_preset(arch) + [
        f"--data_dir={data_dir}", f"--optimizer={optimizer}", f"--learning_rate={adamw_lr}", f"--min_lr={adamw_lr / 10}",
        f"--muon_lr={lr if optimizer == 'muon' else config.muon_lr}", f"--max_iters={steps}",
        f"--warmup_iters={args.warmup}", f"--lr_decay_iters={steps}", f"--n_layer={args.n_layer}",
        f"--n_head={args.n_head}", f"--n_embd={args.n_embd}", f"--block_size={args.block_size}",
        f"--batch_size={args.batch_size}", "--gradient_accumulation_steps=1", "--dropout=0", f"--seed={args.seed}",
        f"--device={args.device}", "--dtype=float32", "--compile=false", f"--muon_dtype={args.muon_dtype}"])
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**scratch_model_args(cfg, VOCAB_SIZE))).to(device)
    cpu_fast_paths.enable(model, device)  # as train.py: only on a CPU in float32
    device_type = device.split(":")[0]
    return SimpleNamespace(arch=arch, optimizer=optimizer, lr=lr, steps=steps, cfg=cfg, model=model,
                           optimizers=make_optimizers(model, cfg, device_type),
                           scaler=torch.amp.GradScaler(device_type, enabled=False), seconds=0.0, val={})


def muon_dtype(runs):
    """The dtype Muon orthogonalized in: torch.optim.Muon's bfloat16, or Float32Muon's float32."""
    muon = next(run.optimizers["muon"] for run in runs if run.optimizer == "muon")  # (every sweep has Muon runs)
    return "float32" if isinstance(muon, Float32Muon) else "bfloat16"


def label(run):
    arch = "" if run.arch == "gpt2" else f"{run.arch}, "
    return f"{arch}{'AdamW' if run.optimizer == 'adamw' else 'Muon'} lr {run.lr:g}, {run.steps} steps"


def final_loss(run):
    return run.val[run.steps]


def ms_per_step(run):
    return 1e3 * run.seconds / run.steps


def take_step(run, step, device):
    """One optimizer step of `run` (train.py's), timed: its seconds grow by the step's wall-clock."""
    start = time.perf_counter()
    set_learning_rates(run.optimizers, step, run.cfg)
    next_batch = functools.partial(training_batch, run.cfg, device, step, 0)
    loss = train_step(run.model, run.optimizers, run.scaler, next_batch, 1, contextlib.nullcontext(),
                      run.cfg.grad_clip).item()  # .item() waits for the step to finish, on a GPU too
    run.seconds += time.perf_counter() - start
    if not np.isfinite(loss):
        raise UserError(f"{label(run)}: the training loss became {loss} at step {step}; leave out that learning rate")


def validation_loss(run, val_tokens, device):
    nats, count = evaluate(run.model, val_tokens, 32, device)
    run.model.train()
    return nats / count


def train_in_turn(runs, val_tokens, eval_steps, device):
    """Train all runs to their own lengths, one step of each in turn (the order rotates every
    step); evaluate each at the steps in eval_steps and at its end."""
    for step in range(max((run.steps for run in runs), default=0)):  # (none: --arch_budget=0)
        turn = step % len(runs)
        for run in runs[turn:] + runs[:turn]:
            if step < run.steps:
                take_step(run, step, device)
        for run in runs:
            if step < run.steps and (step + 1 in eval_steps or step + 1 == run.steps):
                run.val[step + 1] = validation_loss(run, val_tokens, device)
                print(f"  {label(run)}: step {step + 1}, val loss {run.val[step + 1]:.4f}, "
                      f"{1e3 * run.seconds / (step + 1):.0f} ms/step", flush=True)


def steps_to_reach(target, short, long):
    """Steps a schedule needs to end at loss `target`, from two runs of one optimizer and lr with
    schedules of different lengths: linear in final loss between them. None if neither reaches it."""
    if final_loss(short) <= target:
        return short.steps  # (or fewer)
    if final_loss(long) > target:
        return None
    return short.steps + (long.steps - short.steps) * (final_loss(short) - target) / (final_loss(short) - final_loss(long))


# ----------------------------------------------------------------------------- main

def main():
    args = parse_args(sys.argv[1:])
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, cpu_before = time.time(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-optimizers-") as data_dir:
        tokens = prepare_text(args.text, data_dir)
        if min(len(t) for t in tokens.values()) <= args.block_size + 1:
            raise UserError(f"--text {args.text} is too short for windows of {args.block_size} tokens")
        print(f"bench_optimizers on {device}: {machine()}, torch {torch.__version__}; {len(tokens['train']):,} "
              f"training and {len(tokens['validation']):,} validation tokens", flush=True)

        print(f"1. sweep, {args.steps} steps each", flush=True)
        sweep = [new_run(args, data_dir, optimizer, lr, args.steps, device, arch) for arch in args.archs
                 for optimizer, lrs in (("adamw", args.adamw_lrs), ("muon", args.muon_lrs)) for lr in lrs]
        train_in_turn(sweep, tokens["validation"], set(range(args.eval_every, args.steps, args.eval_every)), device)
        best = {(arch, name): min((run for run in sweep if (run.arch, run.optimizer) == (arch, name)), key=final_loss)
                for arch in args.archs for name in ("adamw", "muon")}

        if len(args.archs) == 1:
            print("2. budgets: the best Muon with fewer steps, the best AdamW with more", flush=True)
            arch = args.archs[0]
            budgets = [new_run(args, data_dir, "muon", best[arch, "muon"].lr, round(args.muon_budget * args.steps),
                               device, arch),
                       new_run(args, data_dir, "adamw", best[arch, "adamw"].lr, round(args.adamw_budget * args.steps),
                               device, arch)]
            best = {name: best[arch, name] for name in ("adamw", "muon")}
        else:
            print(f"2. budgets: the best {args.archs[1]} runs with fewer steps", flush=True)
            budgets = [new_run(args, data_dir, name, best[args.archs[1], name].lr, round(args.arch_budget * args.steps),
                               device, args.archs[1]) for name in ("adamw", "muon") if args.arch_budget]
        train_in_turn(budgets, tokens["validation"], set(), device)

    seconds = time.time() - started
    (busy_before, own_before), (busy_after, own_after) = cpu_before, cpu_seconds()
    # what other processes took of the CPUs while this ran: their noise is in the times
    foreign = max(0.0, (busy_after - busy_before) - (own_after - own_before)) / (seconds * os.cpu_count())
    kind = device_kind(device)
    if len(args.archs) == 1:
        key, title, body = f"optimizers-{kind}", f"AdamW and Muon ({kind})", report(args, sweep, best, budgets)
    else:
        key, title = f"{args.archs[0]}-vs-{args.archs[1]}-{kind}", f"{args.archs[1]} against {args.archs[0]} ({kind})"
        body = report_archs(args, sweep, best, budgets)
    publish("bench_optimizers.py", settings(args, sweep, len(tokens["validation"]), seconds, foreign), body,
            args.output, key, title, args.no_record)


def settings(args, sweep, val_tokens, seconds, foreign):
    """What BENCHMARKS.md says of a run besides its tables: the machine, the load, the recipe."""
    models = " and ".join("GPT-2's block" if arch == "gpt2" else f"presets/{arch}.py's" for arch in args.archs)
    return (f"{machine()}; torch {torch.__version__}; {seconds / 60:.1f} min; other processes used "
            f"{100 * foreign:.0f}% of the CPUs meanwhile. Model: {args.n_layer} layers x {args.n_embd} wide, "
            f"context {args.block_size}, no dropout, float32, {models}, Muon's orthogonalization in "
            f"{muon_dtype(sweep)}. Every run: {args.batch_size} x "
            f"{args.block_size} tokens a step, the same batches and initial weights, warmup {args.warmup} steps, "
            f"then cosine to a tenth of each peak; Muon runs train the embeddings, biases and LayerNorms with AdamW "
            f"at {args.muon_adamw_lr:g}. Loss: eval.py's pass over the whole validation split ({val_tokens:,} tokens)."
            + (f"\n\n{args.note}" if args.note else ""))


def sweep_table(sweep, best):
    """The sweep's losses and times, one row a run."""
    evals = sorted(sweep[0].val)
    lines = ["| run | " + " | ".join(f"val loss @{step}" for step in evals) + " | training time | per step |",
             "|---|" + "---|" * (len(evals) + 2)]
    for run in sweep:
        lines.append(f"| {label(run)}{' (best)' if run in best.values() else ''} | "
                     + " | ".join(f"{run.val[step]:.4f}" for step in evals)
                     + f" | {run.seconds:.0f} s | {ms_per_step(run):.0f} ms |")
    return lines


def report(args, sweep, best, budgets):
    """The tables of a one-model run: the sweep's losses and times, the verdicts."""
    adamw, muon = best["adamw"], best["muon"]
    muon_short, adamw_long = budgets
    lines = sweep_table(sweep, best)

    muon_steps = steps_to_reach(final_loss(adamw), muon_short, muon)
    adamw_steps = steps_to_reach(final_loss(muon), adamw, adamw_long)
    if muon_steps is None:
        muon_text, met = f"more than {muon.steps}", False
    else:
        at_most = "at most " if muon_steps == muon_short.steps else ""
        muon_text = f"{at_most}{muon_steps:.0f} ({muon_steps / adamw.steps:.0%} of AdamW's {adamw.steps})"
        met = muon_steps <= TARGET_STEP_FRACTION * adamw.steps
    if adamw_steps is None:
        adamw_text = f"more than {adamw_long.steps} ({adamw_long.steps / muon.steps:.1f}x Muon's)"
    else:
        at_most = "at most " if adamw_steps == adamw.steps else ""
        adamw_text = f"{at_most}{adamw_steps:.0f} ({adamw_steps / muon.steps:.2f}x Muon's {muon.steps})"
    time_ratio = ms_per_step(muon) / ms_per_step(adamw)
    lines += ["", "| figure | value | target | |", "|---|---|---|---|",
              f"| best AdamW: lr {adamw.lr:g}, final val loss | {final_loss(adamw):.4f} |  |  |",
              f"| best Muon: lr {muon.lr:g}, final val loss at the same steps | {final_loss(muon):.4f} "
              f"({final_loss(muon) - final_loss(adamw):+.4f}) |  |  |",
              f"| best Muon with a {muon_short.steps}-step schedule, final val loss | {final_loss(muon_short):.4f} |  |  |",
              f"| best AdamW with a {adamw_long.steps}-step schedule, final val loss | {final_loss(adamw_long):.4f} |  |  |",
              f"| steps Muon needs to reach AdamW's {final_loss(adamw):.4f} | {muon_text} | "
              f"<= {TARGET_STEP_FRACTION:.0%} | {verdict(met)} |",
              f"| steps AdamW needs to reach Muon's {final_loss(muon):.4f} | {adamw_text} |  |  |",
              f"| wall-clock per step, best Muon / best AdamW (in turn, in one process) | {ms_per_step(muon):.0f} / "
              f"{ms_per_step(adamw):.0f} ms = {time_ratio:.2f}x | <= {TARGET_STEP_TIME:.2f}x | "
              f"{verdict(time_ratio <= TARGET_STEP_TIME)} |",
              f"| the same, budget runs (in turn) | {ms_per_step(muon_short):.0f} / {ms_per_step(adamw_long):.0f} ms "
              f"= {ms_per_step(muon_short) / ms_per_step(adamw_long):.2f}x |  |  |"]
    if muon_steps is not None:
        lines.append(f"| wall-clock to AdamW's final loss: Muon / AdamW (sweep's per-step times) | "
                     f"{muon_steps * ms_per_step(muon) / 1e3:.0f} / {adamw.seconds:.0f} s |  |  |")
    return "\n".join(lines) + "\n"


def report_archs(args, sweep, best, budgets):
    """The tables of --archs=A,B: the sweep, then B against A under each optimizer."""
    base_arch, arch = args.archs
    lines = sweep_table(sweep, best)
    lines += ["", "| figure | value | target | |", "|---|---|---|---|"]
    for name in ("adamw", "muon"):
        base, new = best[base_arch, name], best[arch, name]
        short = next((run for run in budgets if run.optimizer == name), None)
        who = f"{'AdamW' if name == 'adamw' else 'Muon'}: {arch} (lr {new.lr:g}) against {base_arch} (lr {base.lr:g})"
        lines.append(f"| {who}, final val loss at {base.steps} steps | {final_loss(new):.4f} vs {final_loss(base):.4f} "
                     f"({final_loss(new) - final_loss(base):+.4f}) |  |  |")
        ratio = ms_per_step(new) / ms_per_step(base)
        lines.append(f"| {who}, wall-clock per step (in turn) | {ms_per_step(new):.0f} / {ms_per_step(base):.0f} ms "
                     f"= {ratio:.2f}x |  |  |")
        # equal wall-clock: the steps `new` takes in the time `base` took for all of its steps
        same_time = base.steps / ratio
        if short is not None and short.steps <= same_time <= new.steps:
            share = (same_time - short.steps) / (new.steps - short.steps)
            loss = final_loss(short) + (final_loss(new) - final_loss(short)) * share
            lines.append(f"| {who}, val loss in {base_arch}'s {base.seconds:.0f} s ({same_time:.0f} of its steps; "
                         f"between its {short.steps}- and {new.steps}-step schedules) | {loss:.4f} vs "
                         f"{final_loss(base):.4f} |  |  |")
        if short is None:
            continue
        lines.append(f"| {who}, final val loss of a {short.steps}-step schedule | {final_loss(short):.4f} |  |  |")
        steps = steps_to_reach(final_loss(base), short, new)
        if steps is None:
            lines.append(f"| {who}, steps to reach {base_arch}'s {final_loss(base):.4f} | more than {new.steps} | "
                         f"<= {TARGET_STEP_FRACTION:.0%} | {verdict(False)} |")
            continue
        at_most = "at most " if steps == short.steps else ""
        wall = steps * ms_per_step(new) / 1e3
        lines += [f"| {who}, steps to reach {base_arch}'s {final_loss(base):.4f} | {at_most}{steps:.0f} "
                  f"({steps / base.steps:.0%}) | <= {TARGET_STEP_FRACTION:.0%} | "
                  f"{verdict(steps <= TARGET_STEP_FRACTION * base.steps)} |",
                  f"| {who}, wall-clock to reach it | {at_most}{wall:.0f} / {base.seconds:.0f} s "
                  f"({wall / base.seconds:.0%}) "
                  f"| <= {TARGET_STEP_FRACTION:.0%} | {verdict(wall <= TARGET_STEP_FRACTION * base.seconds)} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
