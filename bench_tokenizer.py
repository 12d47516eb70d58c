"""Measure learned vocabularies against GPT-2's and record the figures in BENCHMARKS.md.

    python bench_tokenizer.py --train_text=stories.txt --held_out=val.txt
    python bench_tokenizer.py --train_text=... --held_out=... --sizes=1024,4096 --no_record
    python bench_tokenizer.py --train_text=... --held_out=... --sizes= --big_mb=0 --trainers=rustbpe,tokenizers,sentencepiece

For each vocabulary size: the seconds and peak memory to learn it from --train_text (in a fresh
process each, as prepare.py does), and the bytes per token it cuts the --held_out text into; GPT-2's
bytes per token beside them; the single-thread encoding speed of a learned 4,096-token vocabulary
and of GPT-2's (both tiktoken); and the time to learn 4,096 tokens from --big_mb MB of text (the
training text's sentences mixed into new stories). With --trainers, the time and peak memory of each
candidate trainer (rustbpe, Hugging Face tokenizers, sentencepiece) learning 4,096 tokens from
--trainers_mb MB: the measure behind the kit's choice of rustbpe. More bytes per token is a shorter sequence for the same
story; a smaller vocabulary is a smaller LM head. A size the text is too small for is reported as
such, with the largest it allows. The results replace BENCHMARKS.md's section "tokenizers"
(bench.py's record()).
"""
import os
import subprocess
import sys
import tempfile
import time

import tokenizer
from common import ArgumentParser, UserError, run_main

ROOT = os.path.dirname(os.path.abspath(__file__))
TARGET_BIG_LEARN_S = 120  # 4,096 tokens from 100 MB on 2 cores


def read_stories(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    return [story.strip() for story in text.split(tokenizer.EOT_TEXT) if story.strip()]


def stream_stories(path):
    """The stories of a TinyStories .txt one at a time, so the text is never in memory at once and
    a trainer's peak memory is its own."""
    story = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() == tokenizer.EOT_TEXT:
                yield "".join(story).strip()
                story = []
            else:
                story.append(line)
    if "".join(story).strip():
        yield "".join(story).strip()


def learn_with(trainer, stories, vocab_size, out_path):
    """Learn a byte-level BPE of vocab_size tokens from stories with one of the candidate trainers;
    only "rustbpe" is the kit's own (tokenizer.learn), the others are measured to justify that choice."""
    if trainer == "rustbpe":
        with open(out_path, "wb") as f:
            f.write(tokenizer.learn(stories, vocab_size))
    elif trainer == "tokenizers":  # Hugging Face's, as its byte-level BPE docs set it up
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.train_from_iterator(stories, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[tokenizer.EOT_TEXT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        hf.save(out_path)
    elif trainer == "sentencepiece":  # llama2.c's settings (tinystories.py train_vocab)
        import sentencepiece

        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=stories, model_prefix=out_path, model_type="bpe", vocab_size=vocab_size,
            split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True, unk_surface=r" \342\201\207 ",
            normalization_rule_name="identity", num_threads=os.cpu_count(), minloglevel=2)
    else:
        raise UserError(f"unknown trainer {trainer!r}; choose from rustbpe, tokenizers, sentencepiece")


def learn_in_child(text_path, vocab_size, out_path, trainer="rustbpe"):
    """Learn in a fresh process (prepare.py's memory is its own, so is this measure); (seconds,
    peak RSS in bytes, error or None)."""
    code = ("import sys, time\n"
            "from bench_tokenizer import learn_with, stream_stories\n"
            "stories = stream_stories(sys.argv[1])\n"
            "started = time.time()\n"
            "learn_with(sys.argv[4], stories, int(sys.argv[2]), sys.argv[3])\n"
            "seconds = time.time() - started\n"
            # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report this parent's peak
            "peak_kb = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
            "print(seconds, int(peak_kb) * 1024)\n")
    result = subprocess.run([sys.executable, "-c", code, text_path, str(vocab_size), out_path, trainer], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        return None, None, result.stderr.strip().splitlines()[-1]
    seconds, peak = result.stdout.split()[-2:]
    return float(seconds), int(peak), None


def bytes_per_token(encoding, texts):
    return sum(len(t.encode()) for t in texts) / sum(len(ids) for ids in encoding.encode_ordinary_batch(texts, num_threads=1))


def encode_rate(encode, texts, repeats=5):
    """Tokens per second of one thread encoding `texts` one by one with encode(text) (prepare.py's
    workers each do this); the best of a few tries, as other work on the machine only slows it."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = sum(len(encode(t)) for t in texts)
        best = min(best, time.perf_counter() - started)
    return tokens / best


def mixed_text(text_path, mb, path):
    """path, holding at least mb MB of stories made of the sentences of text_path's stories, mixed
    at random (made once). Each story is new, as in the full dataset, so no trainer can learn
    from a few distinct stories counted many times; the words are the text's own."""
    if not os.path.exists(path):
        import random
        import re

        rng = random.Random(0)
        sentences = [s for story in read_stories(text_path) for s in re.split(r"(?<=[.!?])\s+", story)]
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < mb * 10**6:
                f.write(" ".join(rng.choices(sentences, k=10)) + f"\n{tokenizer.EOT_TEXT}\n")
    return path


def main():
    from bench import machine, publish  # torch with it: not in the learning child's memory

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--train_text", required=True, help="stories to learn from, in the TinyStories .txt layout")
    parser.add_argument("--held_out", required=True, help="text no vocabulary learned from, to measure bytes per token")
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="comma-separated vocabulary sizes")
    parser.add_argument("--big_mb", type=int, default=100, help="MB of text to time learning 4,096 tokens from (0: skip)")
    parser.add_argument("--trainers", default="",
                        help="comma-separated trainers to compare at 4,096 tokens: rustbpe,tokenizers,sentencepiece")
    parser.add_argument("--trainers_mb", type=int, default=20, help="MB of text the --trainers learn from")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not write BENCHMARKS.md")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="the file whose section the results replace")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes={args.sizes!r}: give whole numbers separated by commas, e.g. 1024,4096") from None
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    stories, held_out = read_stories(args.train_text), read_stories(args.held_out)
    gpt2 = tokenizer.load_gpt2()
    started = time.time()
    lines = [("GPT-2's (tiktoken)", "50,257", "", "", f"{bytes_per_token(gpt2, held_out):.3f}")]
    learned = {}
    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as scratch:
        for size in sizes:
            path = os.path.join(scratch, f"{size}.json")
            seconds, peak, error = learn_in_child(args.train_text, size, path)
            if error:
                lines.append(("learned here (rustbpe)", f"{size:,}", "", "", error.split(": ", 1)[-1]))
                continue
            learned[size] = encoding = tokenizer.load_file(path)[0]
            lines.append(("learned here (rustbpe)", f"{size:,}", f"{seconds:.2f} s",
                          f"{peak / 2**20:.0f} MiB", f"{bytes_per_token(encoding, held_out):.3f}"))
            print(" | ".join(lines[-1]), flush=True)
        rates = []
        if 4096 in learned:
            import rustbpe

            trainers_own = rustbpe.Tokenizer()  # the same vocabulary in rustbpe's own encoder, the alternative
            trainers_own.train_from_iterator(iter(stories), 4096 - 1, pattern=tokenizer.GPT2_PATTERN)
            for name, encode in (("a learned 4,096-token vocabulary, tiktoken (the kit's)", learned[4096].encode_ordinary),
                                 ("the same vocabulary, rustbpe's encoder", trainers_own.encode),
                                 ("GPT-2's, tiktoken", gpt2.encode_ordinary)):
                rates.append((f"encode, 1 thread, {name}", f"{encode_rate(encode, stories) / 1e6:.2f} M tokens/s"))
        for trainer in trainers:
            big = mixed_text(args.train_text, args.trainers_mb, os.path.join(scratch, f"{args.trainers_mb}.txt"))
            seconds, peak, error = learn_in_child(big, 4096, os.path.join(scratch, trainer), trainer)
            rates.append((f"learn 4,096 tokens from {os.path.getsize(big) / 1e6:.0f} MB with {trainer}",
                          error or f"{seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MiB"))
            print(" | ".join(rates[-1]), flush=True)
        if args.big_mb:
            big = mixed_text(args.train_text, args.big_mb, os.path.join(scratch, f"{args.big_mb}.txt"))
            seconds, peak, error = learn_in_child(big, 4096, os.path.join(scratch, "big.json"))
            rates.append((f"learn 4,096 tokens from {os.path.getsize(big) / 1e6:.0f} MB with rustbpe",
                          error or f"{seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MiB (target < {TARGET_BIG_LEARN_S} s: "
                          f"{'met' if seconds < TARGET_BIG_LEARN_S else '**missed**'})"))

    details = (f"{machine()}; {(time.time() - started) / 60:.1f} min; learned from {len(stories):,} stories "
               f"({sum(len(s.encode()) for s in stories) / 1e6:.1f} MB), bytes per token on "
               f"{sum(len(s.encode()) for s in held_out) / 1e3:,.0f} KB of held-out text")
    table = ["| tokenizer | vocabulary | learning time | peak RSS | held-out bytes/token |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in lines]
    table += ["", "| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rates]
    publish("bench_tokenizer.py", details, "\n".join(table), args.output, "tokenizers", "Tokenizers", args.no_record)


if __name__ == "__main__":
    run_main(main)
