"""A tokenizer of one's own: learned by `prepare.py --vocab_size`, carried by the run, used by every script."""
import json
import os

import numpy as np
import pytest
import torch

import prepare
import tokenizer
from checkpoint import load_checkpoint
from common import UserError
from conftest import (TINY_RUN, assert_clean_error, copy_of, make_stories, run_in_process, run_script,
                      train_tiny_run, write_txt)

VOCAB = 384  # the tiny stories hold pairs for about 420 tokens

# Text a tokenizer must give back exactly: accents, emoji (one of them several code points joined),
# TinyStories' own mojibake, the end-of-text text inside a story, empty lines, runs of spaces, a
# text with no spaces at all, other scripts and digits, and nothing.
AWKWARD = ["Émile saw a café, naïve and süß — ø!", "😀🎉 a family 👩‍👩‍👧 waved", "Lily said â€œhiâ€\x9d and Ã©",
           "The end.<|endoftext|>Once upon a time", "\n\n\nThree empty lines\n\n", "  two  spaces\t\ttabs  ",
           "nospacesatallinthislongline" * 20, "数字 ١٢٣ 4567 8.9", ""]


def learned(size=VOCAB, stories=300):
    """(Encoding, tokenizer.json bytes) learned from the tiny stories."""
    data = tokenizer.learn(iter(make_stories(stories)), size)
    return tokenizer_from(data), data


def tokenizer_from(data):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, tokenizer.TOKENIZER_FILE)
        with open(path, "wb") as f:
            f.write(data)
        return tokenizer.load_file(path)[0]


def test_a_learned_tokenizer_gives_back_any_text_exactly():
    enc, _ = learned()
    assert (enc.n_vocab, enc.eot_token) == (VOCAB, VOCAB - 1)
    for text in AWKWARD + make_stories(5, seed=9):
        assert enc.decode(enc.encode_ordinary(text)) == text, text
    story = make_stories(1, seed=3)[0]
    assert len(enc.encode_ordinary(story)) < len(story.encode()) / 3  # it learned the stories' words


def test_hugging_face_reads_the_tokenizer_json_and_encodes_as_tiktoken_does():
    from tokenizers import Tokenizer

    enc, data = learned()
    hf = Tokenizer.from_str(data.decode())
    assert hf.get_vocab_size() == VOCAB and hf.token_to_id(tokenizer.EOT_TEXT) == VOCAB - 1
    for text in make_stories(50, seed=5) + [t for t in AWKWARD if tokenizer.EOT_TEXT not in t]:
        ids = enc.encode_ordinary(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids) == text


def test_the_same_text_and_size_give_the_same_file_and_another_size_another():
    a, b, c = (learned(size)[1] for size in (VOCAB, VOCAB, VOCAB - 1))
    assert a == b and a != c


def test_each_merge_is_the_pair_its_token_was_made_of():
    ranks = {bytes([i]): i for i in range(256)}
    for token in (b"ab", b"bc", b"abc", b"abcd"):  # "abc" = "ab" + "c": "ab" was learned before "bc"
        ranks[token] = len(ranks)
    assert tokenizer.merge_of(b"abc", ranks) == [b"ab", b"c"]
    assert tokenizer.merge_of(b"abcd", ranks) == [b"abc", b"d"]
    assert tokenizer.merge_of(b"bc", ranks) == [b"b", b"c"]


def test_a_text_too_small_for_the_vocabulary_is_refused_with_the_size_it_allows():
    with pytest.raises(UserError, match=r"only enough pairs for a vocabulary of (\d+) tokens, not 4096") as e:
        tokenizer.learn(iter(["hello world, hello"]), 4096)
    allowed = int(e.value.args[0].split("vocabulary of ")[1].split()[0])
    assert tokenizer.learn(iter(["hello world, hello"]), allowed)  # that size it can learn


def test_learning_reads_the_training_pieces_only_and_stops_at_the_byte_limit():
    pieces = [(f"story {i} " * 3, True) for i in range(10)]
    learned_from = {"bytes": 0, "documents": 0}
    texts = list(prepare.learning_texts(iter(pieces), 0.2, 10**9, learned_from))
    kept = [p for i, (p, _) in enumerate(pieces) if not prepare.held_out(i, 0.2)]
    assert texts == kept and len(kept) == 8  # task_batches holds out the same two for validation
    assert learned_from == {"bytes": sum(len(p) for p in kept), "documents": 8}
    learned_from = {"bytes": 0, "documents": 0}
    # pieces of 24 bytes: the third reaches the limit of 50, and no more are read
    assert len(list(prepare.learning_texts(iter(pieces), 0.0, 50, learned_from))) == 3
    assert learned_from["bytes"] == 72


@pytest.mark.parametrize("content", [b"not json", b'{"model": {"type": "Unigram"}, "pre_tokenizer": null}',
                                     b'{"model": {"type": "BPE", "vocab": {"\\u0000": 0}}, '
                                     b'"pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": []}'])
def test_a_file_that_is_not_a_byte_level_bpe_is_one_line(tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(UserError, match="is not a byte-level BPE tokenizer.json"):
        tokenizer.load_file(str(tmp_path / "tokenizer.json"))


# ----------------------------------------------------------------------------- prepare.py

def prepare_own(tmp_path, *flags, name="data", stories=300):
    if not (tmp_path / "stories.txt").exists():
        write_txt(tmp_path / "stories.txt", make_stories(stories))
    return run_script("prepare.py", "--input", tmp_path / "stories.txt", "--out_dir", tmp_path / name,
                      "--val_fraction", "0.1", *flags)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, offline_tokenizer):
    folder = tmp_path_factory.mktemp("own-data")
    result = prepare_own(folder, f"--vocab_size={VOCAB}")
    assert result.returncode == 0, result.stderr
    return folder / "data"


@pytest.fixture(scope="module")
def own_run(own_data, tmp_path_factory):
    return train_tiny_run(own_data, tmp_path_factory.mktemp("own-run"), "--max_iters=4", "--eval_interval=2",
                          "--learning_rate=3e-3")


@pytest.mark.slow
def test_prepare_learns_the_vocabulary_and_writes_its_ids_and_file(own_data):
    meta = json.loads((own_data / "meta.json").read_text())
    enc, record = tokenizer.load_file(str(own_data / "tokenizer.json"))
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["sha256"] == record["sha256"]
    assert (meta["vocab_size"], meta["eot_token"]) == (VOCAB, VOCAB - 1)
    train_meta = meta["splits"]["train"]
    assert meta["tokenizer"]["learned_from"] == {"text_bytes": train_meta["text_bytes"], "stories": train_meta["stories"]}
    stories = make_stories(300)
    held = [s for i, s in enumerate(stories) if prepare.held_out(i, 0.1)]
    kept = [s for i, s in enumerate(stories) if not prepare.held_out(i, 0.1)]
    for split, texts in (("train", kept), ("validation", held)):
        ids = np.fromfile(own_data / f"{split}.bin", dtype=np.uint16).tolist()
        assert ids == [t for s in texts for t in enc.encode_ordinary(s) + [VOCAB - 1]]


@pytest.mark.slow
def test_the_vocabulary_is_learned_from_the_training_split_only(tmp_path):
    write_txt(tmp_path / "stories.txt", make_stories(300))
    write_txt(tmp_path / "val.txt", ["Zorbulax quibbled with Zorbulax." * 30] * 20)  # only in validation
    result = run_script("prepare.py", "--input", tmp_path / "stories.txt", "--val_input", tmp_path / "val.txt",
                        "--out_dir", tmp_path / "data", f"--vocab_size={VOCAB}")
    assert result.returncode == 0, result.stderr
    enc, _ = tokenizer.load_file(str(tmp_path / "data/tokenizer.json"))
    assert len(enc.encode_ordinary(" Zorbulax quibbled")) >= 8  # learned from, each would be one token
    assert "(300 stories)" in result.stdout  # what it learned from: every training story, no validation one


@pytest.mark.slow
def test_the_tokenizer_and_bin_files_are_the_same_whatever_the_number_of_workers(tmp_path):
    for workers in (1, 2):
        result = prepare_own(tmp_path, f"--vocab_size={VOCAB}", f"--num_proc={workers}", name=f"w{workers}")
        assert result.returncode == 0, result.stderr
    for name in ("tokenizer.json", "train.bin", "validation.bin", "meta.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


@pytest.mark.slow
def test_tokenize_new_text_with_an_existing_tokenizer_from_a_file_a_data_or_a_run_folder(own_data, own_run, tmp_path):
    write_txt(tmp_path / "new.txt", make_stories(40, seed=8))
    enc, _ = tokenizer.load_file(str(own_data / "tokenizer.json"))
    for source in (own_data / "tokenizer.json", own_data, own_run):
        out = tmp_path / f"from-{source.name}"
        result = run_script("prepare.py", "--input", tmp_path / "new.txt", "--out_dir", out, "--tokenizer", source,
                            "--val_fraction", "0.1")
        assert result.returncode == 0, result.stderr
        assert (out / "tokenizer.json").read_bytes() == (own_data / "tokenizer.json").read_bytes()
        meta = json.loads((out / "meta.json").read_text())
        assert meta["tokenizer"] == tokenizer.essentials(json.loads((own_data / "meta.json").read_text())["tokenizer"])
        ids = np.fromfile(out / "train.bin", dtype=np.uint16)
        assert ids.max() < VOCAB and enc.decode(ids[:50].tolist()).startswith("Once upon a time")


@pytest.mark.slow
def test_existing_data_is_kept_for_the_same_tokenizer_refused_for_another_and_replaced_with_force(own_data, tmp_path):
    data = copy_of(own_data, tmp_path)
    before = (data / "train.bin").read_bytes()

    def prepare_again(*flags):  # from the same text as own_data, into its copy
        return run_script("prepare.py", "--input", own_data.parent / "stories.txt", "--out_dir", data,
                          "--val_fraction", "0.1", *flags)

    again = prepare_again(f"--vocab_size={VOCAB}")
    assert again.returncode == 0 and "skipping" in again.stdout, again.stderr
    for flags in ([], [f"--vocab_size={VOCAB + 8}"]):  # GPT-2's, another size: neither silently kept nor replaced
        refused = prepare_again(*flags)
        assert_clean_error(refused, "already holds data made with an own 384-token tokenizer", "--force")
        assert (data / "train.bin").read_bytes() == before
    forced = prepare_again("--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((data / "meta.json").read_text())["vocab_size"] == 50257


@pytest.mark.parametrize("flags, message", [
    (["--vocab_size=257"], "must be from 258"),
    (["--vocab_size=65537"], "to 65,536 (the .bin files are uint16)"),
    (["--vocab_size=512", "--tokenizer=x.json"], "give one of them"),
    (["--tokenizer=nowhere.json"], "nowhere.json does not exist"),
    (["--vocab_text_mb=0"], "--vocab_text_mb=0 must be at least 1"),
])
def test_bad_tokenizer_flags_are_one_line_and_write_nothing(tmp_path, flags, message):
    write_txt(tmp_path / "stories.txt", make_stories(5))
    result = run_in_process("prepare.py", "--input", tmp_path / "stories.txt", "--out_dir", tmp_path / "data", *flags)
    assert_clean_error(result, message)
    assert not (tmp_path / "data").exists()


def test_a_folder_without_a_tokenizer_or_a_file_that_is_not_one_is_one_line(tmp_path):
    write_txt(tmp_path / "stories.txt", make_stories(5))
    for path, message in ((tmp_path, "holds no tokenizer.json"), (tmp_path / "stories.txt", "not a byte-level BPE")):
        result = run_in_process("prepare.py", "--input", tmp_path / "stories.txt", "--out_dir", tmp_path / "data",
                                "--tokenizer", path)
        assert_clean_error(result, message)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_text_too_small_for_the_vocabulary_leaves_no_data(tmp_path):
    result = prepare_own(tmp_path, "--vocab_size=4096", stories=20)
    assert_clean_error(result, "only enough pairs for a vocabulary of", "not 4096")
    assert not (tmp_path / "data").exists()  # not even the folder it would have made


# ----------------------------------------------------------------------------- a run with its own tokenizer

@pytest.mark.slow
def test_the_run_folder_carries_the_tokenizer_and_sample_and_eval_use_it(own_data, own_run, tmp_path):
    assert (own_run / "tokenizer.json").read_bytes() == (own_data / "tokenizer.json").read_bytes()
    config = json.loads((own_run / "config.json").read_text())
    assert tokenizer.same_tokenizer(config["tokenizer"], json.loads((own_data / "meta.json").read_text())["tokenizer"])
    run = copy_of(own_run, tmp_path)  # far from its data folder: the run is self-contained
    sampled = run_script("sample.py", f"--out_dir={run}", "--temperature=0", "--max_new_tokens=20", "--device=cpu",
                         "--prompt", "Once upon a time, there was")
    assert sampled.returncode == 0, sampled.stderr
    enc, _ = tokenizer.load_file(str(run / "tokenizer.json"))
    model_tokens = enc.encode_ordinary(sampled.stdout.strip())
    assert len(model_tokens) > len(enc.encode_ordinary("Once upon a time, there was"))
    evaluated = run_script("eval.py", f"--out_dir={run}", f"--data_dir={own_data}", "--device=cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "bits/byte" in evaluated.stdout


@pytest.mark.slow
def test_an_exported_run_generates_sample_pys_greedy_story_in_transformers(own_run, tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer, GPT2LMHeadModel

    exported = run_script("export.py", f"--out_dir={own_run}", "--to", tmp_path / "hf")
    assert exported.returncode == 0, exported.stderr
    prompt = "Once upon a time, there was a little dog named"  # + 20 tokens: within the 32 positions
    sampled = run_script("sample.py", f"--out_dir={own_run}", "--temperature=0", "--max_new_tokens=20",
                         "--ignore_eot", "--device=cpu", "--dtype=float32", "--prompt", prompt)
    assert sampled.returncode == 0, sampled.stderr
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.eos_token == tokenizer.EOT_TEXT and hf_tokenizer.eos_token_id == VOCAB - 1
    enc, _ = tokenizer.load_file(str(own_run / "tokenizer.json"))
    ids = hf_tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == enc.encode_ordinary(prompt)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert model.config.eos_token_id == VOCAB - 1
    model.generation_config.eos_token_id = None  # --ignore_eot
    out = model.generate(ids, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
    assert enc.decode(out[0].tolist()) == sampled.stdout.rstrip("\n")
    assert hf_tokenizer.decode(out[0]) == sampled.stdout.rstrip("\n")


@pytest.mark.slow
def test_a_fine_tune_from_a_run_or_its_export_needs_data_of_the_same_tokenizer(own_data, own_run, tiny_data, tmp_path):
    exported = run_script("export.py", f"--out_dir={own_run}", "--to", tmp_path / "hf")
    assert exported.returncode == 0, exported.stderr
    for source in (own_run, tmp_path / "hf"):
        out = tmp_path / f"ft-{source.name}"
        tuned = run_script("train.py", f"--data_dir={own_data}", f"--out_dir={out}", f"--init_from={source}",
                           *TINY_RUN[5:], "--device=cpu", "--max_iters=2", "--eval_interval=2")
        assert tuned.returncode == 0, tuned.stderr
        assert (out / "tokenizer.json").read_bytes() == (own_data / "tokenizer.json").read_bytes()
    refused = run_script("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'wrong'}",
                         f"--init_from={own_run}", "--device=cpu", "--max_iters=2")
    assert_clean_error(refused, "was prepared with GPT-2's tokenizer", f"python prepare.py --tokenizer={own_run}")
    assert not (tmp_path / "wrong").exists()


@pytest.mark.slow
def test_resuming_a_run_with_its_own_tokenizer_is_bit_identical(own_data, tmp_path):
    flags = [f"--data_dir={own_data}", *TINY_RUN, "--eval_interval=2", "--dropout=0.1"]
    assert run_script("train.py", f"--out_dir={tmp_path / 'straight'}", *flags, "--max_iters=4").returncode == 0
    assert run_script("train.py", f"--out_dir={tmp_path / 'split'}", *flags, "--max_iters=2").returncode == 0
    resumed = run_script("train.py", f"--out_dir={tmp_path / 'split'}", *flags, "--max_iters=4", "--init_from=resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_checkpoint(str(tmp_path / name / "ckpt.pt")) for name in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_run_whose_tokenizer_is_missing_or_changed_is_one_line_in_sample_eval_and_export(own_data, own_run,
                                                                                          tmp_path, damage):
    run = copy_of(own_run, tmp_path)
    if damage == "missing":
        os.remove(run / "tokenizer.json")
    else:
        (run / "tokenizer.json").write_bytes(learned(VOCAB - 8)[1])
    message = "is missing" if damage == "missing" else "is not the tokenizer"
    for script, *args in (("sample.py", f"--out_dir={run}", "--device=cpu"),
                          ("eval.py", f"--out_dir={run}", f"--data_dir={own_data}", "--device=cpu"),
                          ("export.py", f"--out_dir={run}", "--to", tmp_path / "hf")):
        assert_clean_error(run_in_process(script, *args), message)
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_eval_refuses_data_of_another_tokenizer(own_run, tiny_data):
    result = run_in_process("eval.py", f"--out_dir={own_run}", f"--data_dir={tiny_data}", "--device=cpu")
    assert_clean_error(result, "was prepared with GPT-2's tokenizer", "trained with an own 384-token tokenizer")
