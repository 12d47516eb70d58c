"""The story check: do a run's stories end, loop or copy? No judge model needed.

    python bench_stories.py --out_dir=out                     # 50 stories from the run's best weights
    python bench_stories.py --out_dir=out --data_dir=data_val --no_record

From fixed prompts it writes --num_stories stories (--max_new_tokens each, temperature 0.8,
top-k 200, fixed seed, float32 on the CPU) and reports, beside the held-out bits per byte of the
weights on the data's validation split (eval.py's measure, comparable across tokenizers):
  - ending: the share of stories that end (end-of-text) within the token limit;
  - repetition: the share of each story's word 4-grams that repeat an earlier one of the same
    story (loops), over all stories;
  - copying: the share of the stories' word 8-grams found verbatim in the training text, and the
    longest copied run of words (every 8-word window of it is in the training text): a small data
    set trained for many epochs gives its stories back;
  - distinct-2: distinct word bigrams over all bigrams of all stories (they should not all be
    one story).
Words are whitespace-separated, so the figures compare across tokenizers. It records the figures
and three unedited stories in BENCHMARKS.md, section --key (--no_record: print only).
"""
import os

import numpy as np
import torch

import sample
import tokenizer
from checkpoint import load_model, run_data_dir
from common import ArgumentParser, UserError, run_main
from data import bits_per_byte, load_meta
from eval import evaluate

ROOT = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["Once upon a time", "One day, a little girl named Lily", "Tom and his dog", "The sun was shining and",
           "Mia wanted to", "There was a big red ball", "Ben was sad because", "In a small house near the forest",
           "The little bird", "Sam and Anna went to the park"]


# ----------------------------------------------------------------------------- the figures

def ngrams(words, n):
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition(stories):
    """The share of the stories' word 4-grams that repeat an earlier 4-gram of the same story."""
    repeats = total = 0
    for words in stories:
        grams = ngrams(words, 4)
        repeats += len(grams) - len(set(grams))
        total += len(grams)
    return repeats / total if total else 0.0


def distinct_2(stories):
    """Distinct word bigrams over all word bigrams, across all the stories."""
    grams = [gram for words in stories for gram in ngrams(words, 2)]
    return len(set(grams)) / len(grams) if grams else 0.0


class TrainingText:
    """The word 8-grams of the training text, as a sorted array of 64-bit hashes (far smaller than
    a set of tuples: a 100 MB text has ~20M of them)."""

    def __init__(self, words):
        self.hashes = np.unique(np.array([hash(gram) for gram in ngrams(words, 8)], dtype=np.int64))

    def contains(self, grams):
        """Whether each of the 8-grams is in the training text (a hash collision, ~1e-9, aside)."""
        keys = np.array([hash(gram) for gram in grams], dtype=np.int64)
        at = np.searchsorted(self.hashes, keys).clip(max=len(self.hashes) - 1)
        return (self.hashes[at] == keys) if len(self.hashes) else np.zeros(len(keys), dtype=bool)


def copying(stories, training):
    """(share of the stories' word 8-grams found in the training text, the longest copied run of
    words: the longest stretch whose every 8-word window is in the training text, 0 if none)."""
    found = total = longest = 0
    for words in stories:
        copied = training.contains(ngrams(words, 8))
        found += int(copied.sum())
        total += len(copied)
        run = 0
        for window_copied in copied:  # k windows in a row cover k + 7 words
            run = run + 1 if window_copied else 0
            longest = max(longest, run + 7 if run else 0)
    return (found / total if total else 0.0), longest


def story_check(texts, ended, training):
    """Every figure of the check for the stories `texts` (ended[i]: story i reached end-of-text)."""
    stories = [text.split() for text in texts]
    copied, longest = copying(stories, training)
    return {"stories": len(texts), "ended": sum(ended) / len(texts), "repetition_4gram": repetition(stories),
            "copied_8gram": copied, "longest_copy_words": longest, "distinct_2": distinct_2(stories),
            "mean_words": sum(map(len, stories)) / len(stories)}


# ----------------------------------------------------------------------------- the run

def write(model, enc, num_stories, max_new_tokens, seed):
    """num_stories stories from PROMPTS in turn: [(prompt, text, ended)]."""
    torch.manual_seed(seed)
    results = []
    per_prompt = -(-num_stories // len(PROMPTS))
    for prompt in PROMPTS:
        n = min(per_prompt, num_stories - len(results))
        if n <= 0:
            break
        stories = sample.generate_stories(model, enc.encode_ordinary(prompt), n, max_new_tokens, temperature=0.8,
                                          top_k=200, eot_token=enc.eot_token)
        # a story that ended stopped short of the limit: its end-of-text is not among its tokens
        results += [(prompt, prompt + enc.decode(story), len(story) < max_new_tokens) for story in stories]
    return results


def training_words(data_dir, enc, max_tokens):
    """The words of the run's training text: its train.bin decoded (its first max_tokens tokens)."""
    tokens = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")[:max_tokens]
    eot = tokens == enc.eot_token
    return enc.decode(np.where(eot, enc.encode_ordinary(" ")[0], tokens).tolist()).split()


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", default="out", help="the run folder")
    parser.add_argument("--checkpoint", help="weights to check (default: OUT_DIR/best_model_params.pt)")
    parser.add_argument("--data_dir", help="the prepared data: held-out text and the training text to check copying "
                                           "against (default: the run's data_dir)")
    parser.add_argument("--num_stories", type=int, default=50, help="stories to write, from the fixed prompts in turn")
    parser.add_argument("--max_new_tokens", type=int, default=400, help="the token limit of a story")
    parser.add_argument("--train_tokens", type=int, default=10_000_000,
                        help="check copying against at most this many tokens of the training text")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--label", default="", help="a name for the run in the recorded table")
    parser.add_argument("--key", default="stories", help="the section of --output the results replace")
    parser.add_argument("--no_record", action="store_true", help="print the results only, do not record them")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the results file")
    args = parser.parse_args()
    if args.num_stories < 1 or args.max_new_tokens < 1 or args.train_tokens < 8:
        raise UserError("--num_stories and --max_new_tokens must be at least 1, --train_tokens at least 8")
    checkpoint = args.checkpoint or os.path.join(args.out_dir, "best_model_params.pt")
    model = load_model(checkpoint, "cpu")
    enc = tokenizer.load_run_tokenizer(checkpoint, model.config.vocab_size)
    data_dir = args.data_dir or run_data_dir(checkpoint)
    if data_dir is None:
        raise UserError(f"no config.json beside {checkpoint} names its data; give --data_dir")
    meta = load_meta(data_dir, model.config.block_size)
    tokenizer.check_data_for(checkpoint, data_dir, meta, checkpoint)

    sample.prepare_for_sampling(model, "cpu", torch.float32)
    held_out = np.memmap(os.path.join(data_dir, "validation.bin"), dtype=np.uint16, mode="r")
    nats, count = evaluate(model, held_out, 32, "cpu")
    bpb = bits_per_byte(nats / count, meta["splits"]["validation"])
    results = write(model, enc, args.num_stories, args.max_new_tokens, args.seed)
    figures = story_check([text for _, text, _ in results], [end for _, _, end in results],
                          TrainingText(training_words(data_dir, enc, args.train_tokens)))
    report(args, checkpoint, data_dir, bpb, figures, results)


def report(args, checkpoint, data_dir, bpb, figures, results):
    row = (f"| {args.label or args.out_dir} | {bpb:.4f} | {figures['ended']:.0%} | {figures['repetition_4gram']:.1%} | "
           f"{figures['copied_8gram']:.1%} | {figures['longest_copy_words']} | {figures['distinct_2']:.3f} | "
           f"{figures['mean_words']:.0f} |")
    from bench import machine, publish

    details = (f"{machine()}; {figures['stories']} stories of at most {args.max_new_tokens} tokens from {len(PROMPTS)} "
               "prompts (temperature 0.8, top-k 200); held-out bits/byte on the validation split of the run's data")
    lines = ["| run | held-out bits/byte | stories that end | repeated 4-grams | 8-grams copied from training | "
             "longest copy (words) | distinct-2 | words per story |",
             "|---|---|---|---|---|---|---|---|", row, "", "Three stories, unedited:", ""]
    lines += [f"> {text.strip()}".replace("\n", "\n> ") + "\n" for _, text, _ in results[:: max(1, len(results) // 3)][:3]]
    publish("bench_stories.py", details, "\n".join(lines), args.output, args.key, "Stories", args.no_record)


if __name__ == "__main__":
    run_main(main)
