"""Tokenize TinyStories with the GPT-2 tokenizer into flat uint16 token files.

    python prepare.py                                 # roneneldan/TinyStories from the Hugging Face hub
    python prepare.py --input stories/ --val_input val.txt   # local files, no hub

Writes OUT_DIR/train.bin and OUT_DIR/validation.bin (np.uint16 token ids, every story followed by
the end-of-text token 50256) and OUT_DIR/meta.json (tokenizer, sizes, token and byte counts).
Local formats: .txt in the TinyStories layout (stories separated by a line `<|endoftext|>`),
.jsonl / .json with a `text` field, .parquet with a `text` column.
"""
import codecs
import collections
import contextlib
import json
import multiprocessing
import os
import re

import numpy as np

from common import ArgumentParser, UserError, WriteError, atomic_write, make_output_dir, run_main
from tokenizer import EOT_TOKEN, ENCODING_NAME, VOCAB_SIZE, load_tokenizer

# prepare.py needs no torch; without this, `datasets` imports it (slow to start) when it
# builds a streaming dataset, to cooperate with torch DataLoader workers.
os.environ.setdefault("USE_TORCH", "0")

HUB_DATASET = "roneneldan/TinyStories"
SPLITS = ("train", "validation")
STORIES_PER_TASK = 2048  # stories per task of a tokenizer process: large tasks keep the per-task overhead small
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# A line `<|endoftext|>`, found by its leading newline (a literal prefix lets the regex engine
# skip ahead, which ^...$ with re.MULTILINE does not); txt_stories puts a newline before each file
# so that its first line counts too.
_SEPARATOR = re.compile(r"\n<\|endoftext\|>[ \t\r]*(?=\n|\Z)")


def find_files(paths):
    """Expand files and folders into a sorted list of files with a known format."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
            inside = [p for p in inside if os.path.splitext(p)[1].lower() in FORMATS]
            if not inside:
                raise UserError(f"folder {path} holds no {'/'.join(FORMATS)} files")
            found += inside
        elif os.path.isfile(path):
            if os.path.splitext(path)[1].lower() not in FORMATS:
                raise UserError(f"{path}: unknown format; use one of {', '.join(FORMATS)}")
            found.append(path)
        else:
            raise UserError(f"input path {path} does not exist")
    kinds = {FORMATS[os.path.splitext(p)[1].lower()] for p in found}
    if len(kinds) > 1:
        raise UserError(f"mixed input formats ({', '.join(sorted(kinds))}); give one format per split")
    for path in found:
        if os.path.getsize(path) == 0:
            raise UserError(f"input file {path} is empty")
    return found


def txt_stories(paths):
    """Yield the stories of TinyStories-layout .txt files, reading a chunk at a time."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            pending = "\n"
            while True:
                chunk = f.read(1 << 20)
                pending += chunk
                # split only up to the last complete line; the rest waits for the next chunk
                cut = len(pending) if not chunk else pending.rfind("\n") + 1
                *stories, tail = _SEPARATOR.split(pending[:cut])
                yield from stories
                pending = tail + pending[cut:]
                if not chunk:
                    break
            yield pending


def check_utf8(paths):
    """UserError unless every file is UTF-8 (a fast read-only pass, so a bad file fails before any work)."""
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise UserError(f"input is not UTF-8 text ({path}: {e.reason}); convert it to UTF-8") from e


def txt_examples(paths):
    """txt_stories as the {'text': story} rows a datasets generator yields."""
    for story in txt_stories(paths):
        yield {"text": story}


def load_local(paths):
    """The stories of local files as a `datasets` dataset with a `text` column.

    .jsonl/.json/.parquet load like the hub's files (datasets.load_dataset, cached as Arrow).
    .txt files in the TinyStories layout become a streaming datasets.IterableDataset: converting
    them into an Arrow cache first would be a single-threaded pass over the whole input before
    tokenizing could start, and a second copy of it on disk.
    """
    import datasets

    files = find_files(paths)
    kind = FORMATS[os.path.splitext(files[0])[1].lower()]
    if kind == "text":
        check_utf8(files)
        return datasets.IterableDataset.from_generator(txt_examples, gen_kwargs={"paths": files}), ", ".join(files)
    try:
        ds = datasets.load_dataset(kind, data_files=files, split="train")
    except Exception as e:
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            if isinstance(cause, UnicodeDecodeError):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"input is not UTF-8 text ({', '.join(files)}); convert it to UTF-8") from e
        raise UserError(f"cannot read {', '.join(files)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if "text" not in ds.column_names:
        raise UserError(f"{', '.join(files)} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return ds, ", ".join(files)


def load_splits(args):
    """{'train': (dataset, source), 'validation': (dataset, source) or None to hold out from train}."""
    if args.input is None:
        if args.val_input:
            raise UserError("--val_input needs --input too")
        import datasets

        try:
            hub = datasets.load_dataset(HUB_DATASET)
        except Exception as e:
            raise UserError(f"cannot load {HUB_DATASET} from the Hugging Face hub ({type(e).__name__}); "
                            "without internet pass local files with --input (see README 'Offline use')") from e
        return {split: (hub[split], f"hf://{HUB_DATASET}/{split}") for split in SPLITS}
    splits = {"train": load_local(args.input), "validation": None}
    if args.val_input:
        splits["validation"] = load_local(args.val_input)
    return splits


def held_out(index, fraction):
    """Whether story `index` goes to validation: exactly floor(n * fraction) of n, evenly spread."""
    return int((index + 1) * fraction) > int(index * fraction)


_encoder = None


def _init_worker():
    global _encoder
    _encoder = load_tokenizer()


def encode_stories(stories):
    """Token ids of each non-empty story followed by EOT, concatenated; the story count and text bytes.

    The stories are joined with the EOT text and encoded in one call with EOT as the only allowed
    special token: tiktoken then encodes each piece between EOTs exactly as encode_ordinary would
    (the pre-tokenizer never looks across a special token), with less per-call overhead than one
    call per story, and straight into a numpy array. A story that itself contains the EOT text would be cut there,
    so such a batch takes the per-story path.
    """
    stories = [s for s in (story.strip() for story in stories) if s]
    text_bytes = sum(len(s.encode("utf-8")) for s in stories)
    if not stories:
        return np.zeros(0, dtype=np.uint16), 0, 0
    eot_text = _encoder.decode([EOT_TOKEN])
    if any(eot_text in s for s in stories):
        ids = [t for s in stories for t in _encoder.encode_ordinary(s) + [EOT_TOKEN]]
        return np.array(ids, dtype=np.uint16), len(stories), text_bytes
    joined = eot_text.join(stories) + eot_text
    ids = _encoder.encode_to_numpy(joined, allowed_special={eot_text}, disallowed_special=())
    return ids.astype(np.uint16), len(stories), text_bytes


def text_batches(dataset):
    """Lists of up to STORIES_PER_TASK texts from a datasets.Dataset or IterableDataset."""
    for batch in dataset.select_columns(["text"]).iter(batch_size=STORIES_PER_TASK):
        yield batch["text"]


def story_batches(dataset, split=None, val_fraction=0.0):
    """Batches of (split, stories) read through the dataset without loading it all.

    With split=None, whole stories are held out from the dataset for validation by index.
    """
    index = 0
    for texts in text_batches(dataset):
        if split is not None:
            yield split, texts
            continue
        by_split = {"train": [], "validation": []}
        for text in texts:
            if not text.strip():  # empty stories are dropped anyway; they must not take a validation slot
                continue
            by_split["validation" if held_out(index, val_fraction) else "train"].append(text)
            index += 1
        for name, chunk in by_split.items():
            if chunk:
                yield name, chunk


def write_to(f, data=b""):
    """Append data to an open output file, flushing it to disk when data is empty; WriteError
    naming the file and the operating system's reason (a full disk...) when it cannot."""
    try:
        if data:
            f.write(data)
        else:
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WriteError(f"cannot write {f.name}: {e.strerror}") from e


def tokenize_to_files(jobs, out_files, stats, pool, num_proc, total):
    """Tokenize `jobs` (split, stories) in the worker pool and append ids to out_files[split].

    At most a few tasks are in flight at once, so memory stays flat however large the input.
    """
    from tqdm import tqdm

    with tqdm(total=total, unit="story", desc="tokenizing", smoothing=0.1) as bar:
        in_flight = collections.deque()

        def finish_one():
            split, result = in_flight.popleft()
            ids, stories, text_bytes = result.get()
            write_to(out_files[split], ids.tobytes())
            stats[split]["stories"] += stories
            stats[split]["tokens"] += int(ids.size)
            stats[split]["text_bytes"] += text_bytes
            bar.update(stories)

        for split, stories in jobs:
            in_flight.append((split, pool.apply_async(encode_stories, (stories,))))
            if len(in_flight) >= 4 * num_proc:
                finish_one()
        while in_flight:
            finish_one()


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", metavar="PATH", help="local train files or folders (default: the hub)")
    parser.add_argument("--val_input", nargs="+", metavar="PATH", help="local validation files or folders")
    parser.add_argument("--val_fraction", type=float, default=0.01,
                        help="without --val_input: fraction of --input stories held out for validation")
    parser.add_argument("--out_dir", default="data", help="where train.bin, validation.bin, meta.json go")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    args = parser.parse_args()
    if not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val_fraction={args.val_fraction} must be between 0 and 1")
    if args.num_proc < 1:
        raise UserError(f"--num_proc={args.num_proc} must be at least 1")

    outputs = [os.path.join(args.out_dir, name) for name in ("train.bin", "validation.bin", "meta.json")]
    if all(os.path.exists(p) for p in outputs) and not args.force:
        print(f"{args.out_dir} already holds train.bin, validation.bin and meta.json; skipping (--force to redo)")
        return
    make_output_dir(args.out_dir, "--out_dir")
    load_tokenizer()  # fail now, with the offline instructions, rather than inside every worker
    # Start the tokenizer processes before `datasets` is imported: forked later, each would carry
    # a copy of its memory.
    with multiprocessing.Pool(args.num_proc, initializer=_init_worker) as pool:
        write_splits(args, pool)


def write_splits(args, pool):
    """Tokenize the input into OUT_DIR/{train,validation}.bin and write meta.json."""
    splits = load_splits(args)
    if splits["validation"] is None:
        train, source = splits["train"]
        jobs = story_batches(train, val_fraction=args.val_fraction)
        sources = {"train": source, "validation": f"{source} (held-out fraction {args.val_fraction})"}
    else:
        jobs = (job for split in SPLITS for job in story_batches(splits[split][0], split))
        sources = {split: splits[split][1] for split in SPLITS}
    datasets_read = [dataset for dataset, _ in filter(None, splits.values())]
    # a streamed .txt has no known length: the progress bar then just counts up
    total = sum(map(len, datasets_read)) if all(hasattr(d, "__len__") for d in datasets_read) else None

    stats = {split: {"stories": 0, "tokens": 0, "text_bytes": 0, "source": sources[split]} for split in SPLITS}
    tmp_paths = {split: os.path.join(args.out_dir, f".{split}.bin.tmp") for split in SPLITS}
    out_files = {split: open(path, "wb") for split, path in tmp_paths.items()}
    try:
        tokenize_to_files(jobs, out_files, stats, pool, args.num_proc, total)
        for f in out_files.values():
            write_to(f)
            f.close()
        for split in SPLITS:
            if stats[split]["tokens"] == 0:
                raise UserError(f"the {split} split has no stories; give more input, --val_input, or a larger --val_fraction")
        meta_path = os.path.join(args.out_dir, "meta.json")
        if os.path.exists(meta_path):  # a stale meta.json must never describe the new .bin files
            os.remove(meta_path)
        for split in SPLITS:  # only now do files that look complete appear
            os.replace(tmp_paths[split], os.path.join(args.out_dir, f"{split}.bin"))
    except WriteError as e:
        raise WriteError(f"{e}; nothing in {args.out_dir} was replaced (its earlier files are intact). "
                         "Make room, then run prepare.py again") from e
    finally:
        for split, f in out_files.items():
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
                f.close()
            if os.path.exists(tmp_paths[split]):
                os.remove(tmp_paths[split])

    meta = {"tokenizer": ENCODING_NAME, "vocab_size": VOCAB_SIZE, "eot_token": EOT_TOKEN,
            "dtype": "uint16", "splits": stats}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    for split in SPLITS:
        s = stats[split]
        print(f"{split}: {s['stories']:,} stories, {s['tokens']:,} tokens, {s['text_bytes']:,} bytes of text")
    print(f"wrote {args.out_dir}/train.bin, validation.bin and meta.json")


if __name__ == "__main__":
    run_main(main)
