"""Tokenize a text dataset into flat uint16 token files, with GPT-2's tokenizer or one learned from it.

    python prepare.py                                        # roneneldan/TinyStories from the Hugging Face hub
    python prepare.py --max_stories=20000                    # its first 20,000 stories: a quick run
    python prepare.py --vocab_size=4096                      # learn a 4,096-token BPE from the training split
    python prepare.py --input new.txt --tokenizer=out/ --out_dir=data_new   # an existing run's tokenizer
    python prepare.py --dataset=NAME_OR_FOLDER --text_column=content   # any dataset `datasets` can load
    python prepare.py --input stories/ --val_input val.txt   # local files

It runs in four stages: load the splits (load_splits), cut their documents into pieces
(document_pieces, txt_pieces), learn a vocabulary from the training pieces if --vocab_size asks
for one (learn_tokenizer), and tokenize the pieces in parallel worker processes
(tokenize_to_files). It writes OUT_DIR/train.bin and OUT_DIR/validation.bin (np.uint16 token
ids, every document followed by the end-of-text token: 50256 in GPT-2's vocabulary, the last id
in a learned one), OUT_DIR/meta.json (tokenizer, dataset, sizes, token and byte counts) and, with
a tokenizer of its own, OUT_DIR/tokenizer.json.

Local formats: .txt in the TinyStories layout (stories separated by a line `<|endoftext|>`),
.jsonl / .json with a text field, .parquet with a text column. A .txt without separator lines is
one document (a book, a corpus dump). A long document is tokenized in pieces, cut where GPT-2's
tokenizer would cut the text anyway, so memory stays flat and the tokens equal the whole text's.
"""
import codecs
import collections
import contextlib
import json
import multiprocessing
import os
import re
import tempfile

import numpy as np

from common import ArgumentParser, UserError, WriteError, atomic_write, first_line, make_output_dir, run_main
import tokenizer

# prepare.py needs no torch; without this, `datasets` imports it (slow to start) when it
# builds a streaming dataset, to cooperate with torch DataLoader workers.
os.environ.setdefault("USE_TORCH", "0")

HUB_DATASET = "roneneldan/TinyStories"
SPLITS = ("train", "validation")
PIECES_PER_TASK = 2048  # at most this many pieces per task of a tokenizer process ...
CHARS_PER_TASK = 1 << 20  # ... and about this much text: large tasks keep the per-task overhead small
PIECE_CHARS = 1 << 15  # a document longer than this is cut into pieces of about this size
READ_CHARS = 1 << 20  # a .txt file is read this much at a time
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# A line `<|endoftext|>`, found by its leading newline (a literal prefix lets the regex engine
# skip ahead, which ^...$ with re.MULTILINE does not); txt_pieces puts a newline before each file
# so that its first line counts too.
_SEPARATOR = re.compile(r"\n<\|endoftext\|>[ \t\r]*(?=\n|\Z)")
# Places where GPT-2's pre-tokenizer always ends a piece of text, so that cutting there leaves the
# tokens unchanged: after a line break between two non-space characters, and before a single
# space between two (the space then starts the next word's token, " word").
_LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_SPACE_CUT = re.compile(r"(?<=\S)(?= \S)")
TXT_FEATURES = {"text": "string", "document_end": "bool"}  # the rows of a .txt file: pieces of its documents


# ----------------------------------------------------------------------------- loading the splits

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




def txt_rows(paths):
    """txt_pieces as the rows a datasets generator yields."""
    for text, document_end in txt_pieces(paths):
        yield {"text": text, "document_end": document_end}


def load_local(paths, text_column, scratch):
    """The documents of local files as a `datasets` dataset, and a description of the source.

    .jsonl/.json/.parquet load like the hub's files (datasets.load_dataset, converted to Arrow in
    the scratch folder).
    .txt files become a streaming datasets.IterableDataset of pieces (txt_pieces): converting them
    into an Arrow cache first would be a single-threaded pass over the whole input before
    tokenizing could start, and a second copy of it on disk.
    """
    import datasets

    files = find_files(paths)
    kind = FORMATS[os.path.splitext(files[0])[1].lower()]
    if kind == "text":
        check_utf8(files)
        features = datasets.Features({name: datasets.Value(kind) for name, kind in TXT_FEATURES.items()})
        dataset = datasets.IterableDataset.from_generator(txt_rows, features=features, gen_kwargs={"paths": files})
        return dataset, ", ".join(files)
    try:
        ds = datasets.load_dataset(kind, data_files=files, split="train", cache_dir=scratch)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            if isinstance(cause, UnicodeDecodeError):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"input is not UTF-8 text ({', '.join(files)}); convert it to UTF-8") from e
        raise UserError(f"cannot read {', '.join(files)}: {type(e).__name__}: {first_line(e)}") from e
    check_column(ds, text_column, ", ".join(files))
    return ds, ", ".join(files)


def load_hub(args, scratch):
    """{'train': (dataset, source), 'validation': (dataset, source) or None}, and the revision, of
    a dataset on the Hugging Face hub or in a local folder laid out like one, by the same call."""
    import datasets

    local = os.path.isdir(args.dataset)
    try:  # a quick run (--max_stories) streams, instead of downloading the whole dataset first
        loaded = datasets.load_dataset(
            args.dataset, args.dataset_config, revision=args.revision, streaming=args.max_stories > 0,
            # datasets keys its cache of a local folder on the folder's name, not on its contents:
            # a cache of this run's own keeps an earlier folder of the same name from being read
            cache_dir=scratch if local else None)
    except Exception as e:
        hint = ("" if local else
                "; without internet, pass local files with --input (see docs/offline.md)")
        raise UserError(f"cannot load dataset {args.dataset} ({type(e).__name__}: {first_line(e)}){hint}") from e
    val_split = args.val_split or ("validation" if "validation" in loaded else None)
    for flag, split in (("--train_split", args.train_split), ("--val_split", val_split)):
        if split is not None and split not in loaded:
            raise UserError(f"{args.dataset} has no split {split!r} (its splits: {', '.join(loaded)}); "
                            f"choose one with {flag}")
    splits = {"train": (loaded[args.train_split], f"{args.dataset}/{args.train_split}"),
              "validation": (loaded[val_split], f"{args.dataset}/{val_split}") if val_split else None}
    for dataset, source in filter(None, splits.values()):
        check_column(dataset, args.text_column, source)
    return splits, hub_revision(args.dataset, args.revision) or args.revision


def hub_revision(name, revision):
    """The commit of the hub dataset `name` at `revision` (None: the newest), for meta.json; None
    for a local folder, or when the hub cannot be asked."""
    if os.path.isdir(name):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:
        return None


def check_column(dataset, column, source):
    columns = dataset.column_names
    if columns is not None and column not in columns:  # a streamed dataset may not know its columns yet
        raise UserError(f"{source} has no column {column!r} (its columns: {', '.join(columns)}); "
                        "choose one with --text_column")


def load_splits(args, scratch):
    """{'train': (dataset, source), 'validation': (dataset, source) or None to hold out from train},
    and the dataset's revision where known."""
    if args.input is None:
        if args.val_input:
            raise UserError("--val_input needs --input too")
        return load_hub(args, scratch)
    splits = {"train": load_local(args.input, args.text_column, scratch), "validation": None}
    if args.val_input:
        splits["validation"] = load_local(args.val_input, args.text_column, scratch)
    return splits, None


# ----------------------------------------------------------------------------- cutting documents into pieces

def cut_point(text, limit):
    """An index near `limit` where text can be cut without changing its tokens (see _LINE_CUT):
    the last such place in text[limit // 2 : limit + 1], a line break first, else a space; else
    `limit` itself, where the tokens of the one word that spans the cut may differ."""
    for places in (_LINE_CUT, _SPACE_CUT):
        last = None
        for last in places.finditer(text, limit // 2, limit + 2):  # +2: the lookahead reads 2 characters
            pass
        if last is not None and last.start() <= limit:
            return last.start()
    return limit


def document_pieces(text, first=True, last=True, limit=None):
    """Cut a document (or, with first/last False, the start, middle or end of one) into pieces of
    at most about `limit` characters; (piece, ends_document) pairs. A whole document is stripped of
    surrounding whitespace; an empty one gives nothing."""
    limit = limit or PIECE_CHARS
    if first:
        text = text.lstrip()
    if last:
        text = text.rstrip()
    while len(text) > limit:
        at = cut_point(text, limit)
        yield text[:at], False
        text = text[at:]
    if text or (last and not first):  # a document's end always carries its EOT, even if that piece is empty
        yield text, last


def txt_pieces(paths):
    """The documents of .txt files as (piece, ends_document) pairs, reading a chunk at a time.

    Documents end at a line `<|endoftext|>` and at the end of a file. Text with no end in sight
    (a book with no separators) is handed on in pieces as it is read, so memory stays flat.
    """
    for path in paths:
        with open(path, encoding="utf-8") as f:
            pending, first = "\n", True  # the newline lets the file's first line be a separator too
            while True:
                chunk = f.read(READ_CHARS)
                pending += chunk
                # split only up to the last complete line; the rest waits for the next chunk
                cut = len(pending) if not chunk else pending.rfind("\n") + 1
                *documents, tail = _SEPARATOR.split(pending[:cut])
                for document in documents:
                    yield from document_pieces(document, first)
                    first = True
                pending = tail + pending[cut:]
                if not chunk:
                    break
                if len(pending) > 2 * PIECE_CHARS:  # a long document: hand on its start now
                    # cut before the last lines, so that a separator line still being read stays whole
                    limit = pending.rfind("\n", 0, len(pending) - PIECE_CHARS)
                    if limit > 0:
                        at = cut_point(pending, limit)
                        for piece, _ in document_pieces(pending[:at], first, last=False):
                            first = False
                            yield piece, False
                        pending = pending[at:]
            yield from document_pieces(pending, first)


def held_out(index, fraction):
    """Whether piece `index` goes to validation: exactly floor(n * fraction) of n, evenly spread."""
    return int((index + 1) * fraction) > int(index * fraction)


def dataset_pieces(dataset, text_column):
    """(piece, ends_document) pairs from a datasets.Dataset or IterableDataset, read in batches."""
    if is_txt(dataset):  # its rows are pieces already
        for batch in dataset.iter(batch_size=1024):
            yield from zip(batch["text"], batch["document_end"])
        return
    for batch in dataset.select_columns([text_column]).iter(batch_size=1024):
        for text in batch[text_column]:
            yield from document_pieces(text or "")


def is_txt(dataset):
    return list(dataset.features or {}) == list(TXT_FEATURES)


def first_documents(pieces, count):
    """The pieces of the first `count` documents (all of them for count=0)."""
    for piece, document_end in pieces:
        yield piece, document_end
        count -= document_end
        if count == 0:
            return


def task_batches(pieces, split=None, val_fraction=0.0):
    """Batches of (split, [(piece, ends_document), ...]) of bounded size, for the workers.

    With split=None, pieces are held out for validation by index: whole stories, as a story is one
    piece; a document too long for one piece is held out piece by piece.
    """
    batches = {name: [] for name in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for index, (piece, document_end) in enumerate(pieces):
        name = split or ("validation" if held_out(index, val_fraction) else "train")
        if split is None and not document_end and name == "validation":
            document_end = True  # a held-out piece of a long document: its own little document
        batches[name].append((piece, document_end))
        sizes[name] += len(piece)
        if len(batches[name]) >= PIECES_PER_TASK or sizes[name] >= CHARS_PER_TASK:
            yield name, batches[name]
            batches[name], sizes[name] = [], 0
    for name, batch in batches.items():
        if batch:
            yield name, batch


# ----------------------------------------------------------------------------- learning a vocabulary

def learning_texts(pieces, val_fraction, max_bytes, learned):
    """The text of the training pieces to learn a vocabulary from: at most max_bytes of it, from
    the start, leaving out the pieces task_batches holds out for validation (val_fraction, or 0
    when the validation split is separate). learned['bytes'/'documents'] count what was read."""
    for index, (piece, document_end) in enumerate(pieces):
        if val_fraction and held_out(index, val_fraction):
            continue
        if learned["bytes"] >= max_bytes:
            return
        learned["bytes"] += len(piece.encode("utf-8"))
        learned["documents"] += document_end
        yield piece


def learn_tokenizer(args, pieces, val_fraction, path):
    """Learn a byte-level BPE of --vocab_size tokens from the training pieces into `path`
    (tokenizer.json); what it learned from."""
    import time

    learned = {"bytes": 0, "documents": 0}
    started = time.time()
    print(f"learning a {args.vocab_size:,}-token vocabulary from the training split "
          f"(at most its first {args.vocab_text_mb:,} MB)...", flush=True)
    data = tokenizer.learn(learning_texts(pieces, val_fraction, args.vocab_text_mb * 10**6, learned), args.vocab_size)
    atomic_write(path, lambda f: f.write(data))
    print(f"learned it from {learned['bytes'] / 1e6:,.1f} MB of text ({learned['documents']:,} stories) "
          f"in {time.time() - started:.1f}s")
    return learned


# ----------------------------------------------------------------------------- tokenizing

_encoder, _encoder_path = None, None


def load_encoder(path):
    """tiktoken's Encoding: GPT-2's for path None, else that of the tokenizer.json at path."""
    return tokenizer.load_gpt2() if path is None else tokenizer.load_file(path)[0]


def encode_pieces(pieces, tokenizer_path=None):
    """Token ids of (piece, ends_document) pairs, EOT after each document's last piece; the
    number of documents ended and the bytes of text. tokenizer_path: see load_encoder.

    The text is joined, with the EOT text at the end of each document, and encoded in one call
    with EOT as the only allowed special token: tiktoken then encodes each stretch between EOTs
    exactly as encode_ordinary would (the pre-tokenizer never looks across a special token), with
    less per-call overhead than one call per document, and straight into a numpy array. A piece
    that itself contains the EOT text would be cut there, so such a batch takes the per-piece path.
    """
    global _encoder, _encoder_path
    if _encoder is None or _encoder_path != tokenizer_path:  # once per worker process
        _encoder, _encoder_path = load_encoder(tokenizer_path), tokenizer_path
    text_bytes = sum(len(piece.encode("utf-8")) for piece, _ in pieces)
    documents = sum(document_end for _, document_end in pieces)
    eot, eot_text = _encoder.eot_token, tokenizer.EOT_TEXT
    if any(eot_text in piece for piece, _ in pieces):
        ids = [t for piece, end in pieces for t in _encoder.encode_ordinary(piece) + [eot] * end]
        return np.array(ids, dtype=np.uint16), documents, text_bytes
    joined = "".join(piece + eot_text * end for piece, end in pieces)
    ids = _encoder.encode_to_numpy(joined, allowed_special={eot_text}, disallowed_special=())
    return ids.astype(np.uint16), documents, text_bytes


# ----------------------------------------------------------------------------- writing the files

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


def tokenize_to_files(jobs, out_files, stats, pool, num_proc, total, tokenizer_path):
    """Tokenize `jobs` (split, pieces) in the worker pool with the tokenizer at tokenizer_path
    (None: GPT-2's) and append ids to out_files[split].

    At most a few tasks are in flight at once, so memory stays flat however large the input.
    """
    from tqdm import tqdm

    with tqdm(total=total, unit="story", desc="tokenizing", smoothing=0.1) as bar:
        in_flight = collections.deque()

        def finish_one():
            split, result = in_flight.popleft()
            ids, documents, text_bytes = result.get()
            write_to(out_files[split], ids.tobytes())
            stats[split]["stories"] += documents
            stats[split]["tokens"] += int(ids.size)
            stats[split]["text_bytes"] += text_bytes
            bar.update(documents)

        for split, pieces in jobs:
            in_flight.append((split, pool.apply_async(encode_pieces, (pieces, tokenizer_path))))
            if len(in_flight) >= 4 * num_proc:
                finish_one()
        while in_flight:
            finish_one()


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default=HUB_DATASET,
                        help="a Hugging Face hub dataset id, or a local folder laid out like one")
    parser.add_argument("--dataset_config", default=None, help="the dataset's configuration (subset), if it has several")
    parser.add_argument("--revision", default=None, help="a branch, tag or commit of the dataset's hub repository")
    parser.add_argument("--text_column", default="text", help="the column holding the text (.jsonl/.parquet too)")
    parser.add_argument("--train_split", default="train", help="the dataset's split to train on")
    parser.add_argument("--val_split", default=None,
                        help="the split to validate on (default: 'validation' if the dataset has one, "
                             "else --val_fraction of the training split is held out)")
    parser.add_argument("--max_stories", type=int, default=0,
                        help="read only the first N training stories (documents), for a quick run; 0 = all")
    parser.add_argument("--input", nargs="+", metavar="PATH", help="local train files or folders, instead of --dataset")
    parser.add_argument("--val_input", nargs="+", metavar="PATH", help="local validation files or folders")
    parser.add_argument("--val_fraction", type=float, default=0.01,
                        help="without a validation split: fraction of the training stories held out for validation")
    parser.add_argument("--out_dir", default="data", help="where train.bin, validation.bin, meta.json go")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--vocab_size", type=int, default=0,
                        help="learn a byte-level BPE of this many tokens from the training split (0: GPT-2's 50,257)")
    parser.add_argument("--vocab_text_mb", type=int, default=500,
                        help="learn the vocabulary from at most the first this many MB of the training text")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenize with an existing tokenizer.json: the file, or a data, run or exported folder")
    args = parser.parse_args()
    if not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val_fraction={args.val_fraction} must be between 0 and 1")
    if args.num_proc < 1:
        raise UserError(f"--num_proc={args.num_proc} must be at least 1")
    if args.max_stories < 0:
        raise UserError(f"--max_stories={args.max_stories} must be 0 (all) or more")
    if args.vocab_size and not tokenizer.MIN_VOCAB <= args.vocab_size <= tokenizer.MAX_VOCAB:
        raise UserError(f"--vocab_size={args.vocab_size} must be from {tokenizer.MIN_VOCAB} (the 256 bytes, a merge "
                        f"and <|endoftext|>) to {tokenizer.MAX_VOCAB:,} (the .bin files are uint16), or 0 for GPT-2's")
    if args.vocab_text_mb < 1:
        raise UserError(f"--vocab_text_mb={args.vocab_text_mb} must be at least 1")
    if args.vocab_size and args.tokenizer:
        raise UserError("--vocab_size learns a new tokenizer and --tokenizer uses an existing one; give one of them")
    tokenizer_path = tokenizer.find_tokenizer_file(args.tokenizer) if args.tokenizer else None
    # fail now, with the offline instructions or what is wrong with the file, rather than in every worker
    wanted = tokenizer.load_file(tokenizer_path)[1] if tokenizer_path else None if args.vocab_size else tokenizer.GPT2
    if tokenizer_path is None and not args.vocab_size:
        tokenizer.load_gpt2()

    if already_prepared(args, wanted):
        print(f"{args.out_dir} already holds train.bin, validation.bin and meta.json made with "
              f"{tokenizer.describe(wanted) if wanted else f'a {args.vocab_size:,}-token vocabulary'}; "
              "skipping (--force to redo)")
        return
    make_output_dir(args.out_dir, "--out_dir")
    # Start the tokenizer processes before `datasets` is imported: forked later, each would carry
    # a copy of its memory.
    with multiprocessing.Pool(args.num_proc) as pool, tempfile.TemporaryDirectory(prefix="prepare-") as scratch:
        write_splits(args, pool, scratch, tokenizer_path)


def already_prepared(args, wanted):
    """Whether out_dir holds finished outputs made with the tokenizer asked for (`wanted`, a
    record; None for a vocabulary still to learn, matched by its size). UserError when it holds
    outputs of another tokenizer: they are not silently kept, nor replaced without --force."""
    meta_path = os.path.join(args.out_dir, "meta.json")
    outputs = [os.path.join(args.out_dir, name) for name in ("train.bin", "validation.bin")] + [meta_path]
    if args.force or not all(os.path.exists(p) for p in outputs):
        return False
    try:
        with open(meta_path) as f:
            found = tokenizer.record_of(json.load(f))
    except (OSError, ValueError, AttributeError):
        return False  # a broken meta.json describes nothing: make the outputs anew
    if found["kind"] == "bpe" and not os.path.isfile(os.path.join(args.out_dir, tokenizer.TOKENIZER_FILE)):
        return False
    if wanted is None:
        matches = found["kind"] == "bpe" and found["vocab_size"] == args.vocab_size
        asked = f"a new {args.vocab_size:,}-token vocabulary"
    else:
        matches, asked = tokenizer.same_tokenizer(found, wanted), tokenizer.describe(wanted)
    if not matches:
        raise UserError(f"{args.out_dir} already holds data made with {tokenizer.describe(found)}, not {asked}; "
                        "choose another --out_dir, or pass --force to replace it")
    return True


def write_splits(args, pool, scratch, tokenizer_path):
    """Tokenize the input into OUT_DIR/{train,validation}.bin and write meta.json (and, for a
    vocabulary learned here, tokenizer.json); `scratch` is a temporary folder for files that are
    not kept. tokenizer_path: an existing tokenizer.json, or None (GPT-2's, or learn one)."""
    splits, revision = load_splits(args, scratch)

    def train_pieces():  # read afresh: once to learn a vocabulary, once to tokenize
        pieces = dataset_pieces(splits["train"][0], args.text_column)
        return first_documents(pieces, args.max_stories) if args.max_stories else pieces

    source = splits["train"][1]
    val_fraction = args.val_fraction if splits["validation"] is None else 0.0
    learned = None
    if args.vocab_size:
        tokenizer_path = os.path.join(scratch, tokenizer.TOKENIZER_FILE)
        learned = learn_tokenizer(args, train_pieces(), val_fraction, tokenizer_path)
    record = tokenizer.load_file(tokenizer_path)[1] if tokenizer_path else tokenizer.GPT2
    if splits["validation"] is None:
        jobs = task_batches(train_pieces(), val_fraction=val_fraction)
        sources = {"train": source, "validation": f"{source} (held-out fraction {args.val_fraction})"}
    else:
        val_pieces = dataset_pieces(splits["validation"][0], args.text_column)
        jobs = (job for split, pieces in (("train", train_pieces()), ("validation", val_pieces))
                for job in task_batches(pieces, split))
        sources = {split: splits[split][1] for split in SPLITS}
    datasets_read = [dataset for dataset, _ in filter(None, splits.values())]
    # a streamed dataset has no known length: the progress bar then just counts up
    lengths_known = all(hasattr(d, "__len__") for d in datasets_read) and not args.max_stories
    total = sum(map(len, datasets_read)) if lengths_known else None

    stats = {split: {"stories": 0, "tokens": 0, "text_bytes": 0, "source": sources[split]} for split in SPLITS}
    tmp_paths = {split: os.path.join(args.out_dir, f".{split}.bin.tmp") for split in SPLITS}
    out_files = {split: open(path, "wb") for split, path in tmp_paths.items()}
    try:
        tokenize_to_files(jobs, out_files, stats, pool, args.num_proc, total, tokenizer_path)
        for f in out_files.values():
            write_to(f)
            f.close()
        for split in SPLITS:
            if stats[split]["tokens"] == 0:
                raise UserError(f"the {split} split has no stories; give more input, --val_input, or a larger --val_fraction")
        meta_path = os.path.join(args.out_dir, "meta.json")
        if os.path.exists(meta_path):  # a stale meta.json must never describe the new .bin files
            os.remove(meta_path)
        if record["kind"] == "bpe":  # the tokenizer first: a data folder never holds .bin files without theirs
            tokenizer.copy_file(os.path.dirname(tokenizer_path), args.out_dir)
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

    dataset = {"name": None if args.input else args.dataset, "config": args.dataset_config, "revision": revision,
               "text_column": args.text_column, "max_stories": args.max_stories or None}
    if learned:
        record = {**record, "learned_from": {"text_bytes": learned["bytes"], "stories": learned["documents"]}}
    meta = {"tokenizer": record, "vocab_size": record["vocab_size"], "eot_token": record["vocab_size"] - 1,
            "dtype": "uint16", "dataset": dataset, "splits": stats}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    for split in SPLITS:
        s = stats[split]
        print(f"{split}: {s['stories']:,} stories, {s['tokens']:,} tokens, {s['text_bytes']:,} bytes of text")
    print(f"wrote {args.out_dir}/train.bin, validation.bin and meta.json")


if __name__ == "__main__":
    run_main(main)
