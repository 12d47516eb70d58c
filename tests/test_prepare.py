"""prepare.py: every input format gives GPT-2 ids + EOT per story, in files that match meta.json."""
import json
import random
import re

import numpy as np
import pytest

import prepare
from conftest import assert_clean_error, copy_of, make_stories, run_in_process, run_script, write_txt
from tokenizer import EOT_TOKEN, load_gpt2


def expected_ids(stories):
    enc = load_gpt2()
    return [t for story in stories for t in enc.encode_ordinary(story) + [EOT_TOKEN]]


def write_jsonl(path, stories):
    with open(path, "w", encoding="utf-8") as f:
        for story in stories:
            f.write(json.dumps({"text": story, "id": 1}) + "\n")


def write_parquet(path, stories):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": stories}), path)


WRITERS = {"stories.txt": write_txt, "stories.jsonl": write_jsonl, "stories.parquet": write_parquet}


@pytest.mark.slow
@pytest.mark.parametrize("filename", sorted(WRITERS))
def test_each_format_gives_gpt2_ids_plus_eot_per_story(tmp_path, filename):
    train, val = make_stories(20, seed=1), make_stories(5, seed=2)
    train[3] = "Émile saw a café. It was \"très\" nice — 😊!\nThe end."  # non-ASCII survives
    WRITERS[filename](tmp_path / filename, train)
    WRITERS[filename](tmp_path / ("val_" + filename), val)
    result = run_script("prepare.py", "--input", tmp_path / filename, "--val_input", tmp_path / ("val_" + filename),
                        "--out_dir", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert np.fromfile(tmp_path / "data/train.bin", dtype=np.uint16).tolist() == expected_ids(train)
    assert np.fromfile(tmp_path / "data/validation.bin", dtype=np.uint16).tolist() == expected_ids(val)


def test_bin_files_match_meta_json(tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"], meta["dtype"]) == (
        {"kind": "gpt2", "vocab_size": 50257}, 50257, 50256, "uint16")
    for split in ("train", "validation"):
        tokens = np.memmap(tiny_data / f"{split}.bin", dtype=np.uint16, mode="r")
        info = meta["splits"][split]
        assert len(tokens) == info["tokens"]
        assert int((tokens == EOT_TOKEN).sum()) == info["stories"]
        assert tokens[-1] == EOT_TOKEN
        assert info["text_bytes"] > info["tokens"]  # about 4 bytes of English per GPT-2 token
    assert meta["splits"]["train"]["stories"] + meta["splits"]["validation"]["stories"] == 300


@pytest.mark.slow
def test_val_fraction_holds_out_whole_stories_the_same_way_each_time(tmp_path):
    stories = make_stories(200, seed=3)
    write_txt(tmp_path / "s.txt", stories)
    for out in ("a", "b"):
        assert run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / out,
                          "--val_fraction", "0.05").returncode == 0
    held = [s for i, s in enumerate(stories) if int((i + 1) * 0.05) > int(i * 0.05)]
    kept = [s for s in stories if s not in held] if len(set(stories)) == len(stories) else None
    val = np.fromfile(tmp_path / "a/validation.bin", dtype=np.uint16).tolist()
    assert len(held) == 10 and val == expected_ids(held)
    if kept is not None:
        assert np.fromfile(tmp_path / "a/train.bin", dtype=np.uint16).tolist() == expected_ids(kept)
    for name in ("train.bin", "validation.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_empty_stories_are_dropped(tmp_path):
    (tmp_path / "s.txt").write_text("One story.\n<|endoftext|>\n\n   \n<|endoftext|>\nTwo story.\n<|endoftext|>\n")
    assert run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d",
                      "--val_fraction", "0.5").returncode == 0
    meta = json.loads((tmp_path / "d/meta.json").read_text())
    assert meta["splits"]["train"]["stories"] + meta["splits"]["validation"]["stories"] == 2


@pytest.mark.slow
def test_existing_outputs_are_kept_unless_force(tmp_path):
    write_txt(tmp_path / "s.txt", make_stories(50))
    args = ["--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d", "--val_fraction", "0.1"]
    assert run_script("prepare.py", *args).returncode == 0
    write_txt(tmp_path / "s.txt", make_stories(80, seed=9))
    before = (tmp_path / "d/train.bin").read_bytes()
    again = run_script("prepare.py", *args)
    assert again.returncode == 0 and "skipping" in again.stdout
    assert (tmp_path / "d/train.bin").read_bytes() == before
    assert run_script("prepare.py", *args, "--force").returncode == 0
    assert (tmp_path / "d/train.bin").read_bytes() != before


@pytest.mark.slow
def test_a_folder_of_files_is_read_in_order(tmp_path):
    (tmp_path / "in").mkdir()
    parts = [make_stories(10, seed=s) for s in (4, 5)]
    write_txt(tmp_path / "in/b.txt", parts[1])
    write_txt(tmp_path / "in/a.txt", parts[0])
    write_txt(tmp_path / "val.txt", make_stories(3))
    assert run_script("prepare.py", "--input", tmp_path / "in", "--val_input", tmp_path / "val.txt",
                      "--out_dir", tmp_path / "d").returncode == 0
    assert np.fromfile(tmp_path / "d/train.bin", dtype=np.uint16).tolist() == expected_ids(parts[0] + parts[1])


@pytest.mark.slow
def test_missing_input_path_is_a_clean_error(tmp_path):
    assert_clean_error(run_script("prepare.py", "--input", tmp_path / "nope.txt", "--out_dir", tmp_path / "d"),
                       "does not exist")
    assert not (tmp_path / "d" / "train.bin").exists()


@pytest.mark.slow
def test_non_utf8_input_is_a_clean_error(tmp_path):
    (tmp_path / "s.txt").write_bytes("Caf\xe9 story\n<|endoftext|>\n".encode("latin-1") * 10)
    assert_clean_error(run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d"),
                       "not UTF-8")


@pytest.mark.slow
def test_empty_input_file_is_a_clean_error(tmp_path):
    (tmp_path / "s.txt").write_text("")
    assert_clean_error(run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d"),
                       "is empty")


@pytest.mark.slow
def test_too_few_stories_for_validation_is_a_clean_error(tmp_path):
    write_txt(tmp_path / "s.txt", make_stories(5))
    assert_clean_error(run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d"),
                       "validation split has no stories")
    assert not list((tmp_path / "d").glob("*.bin"))


@pytest.mark.slow
def test_missing_tokenizer_files_explain_the_offline_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    write_txt(tmp_path / "s.txt", make_stories(5))
    assert_clean_error(run_script("prepare.py", "--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d"),
                       "tokenizer.py --install")


def documents_of(pieces):
    """Join (piece, ends_document) pairs back into documents."""
    documents, current = [], []
    for piece, document_end in pieces:
        current.append(piece)
        if document_end:
            documents.append("".join(current))
            current = []
    assert not current  # every document was ended
    return documents


def test_txt_documents_split_exactly_at_separator_lines_across_read_chunks(tmp_path):
    rng = random.Random(0)
    separators = ["<|endoftext|>", "<|endoftext|> \r", "<|endoftext|>\t"]
    not_separators = ["x <|endoftext|>", "<|endoftext|>x", " <|endoftext|>"]  # stay inside the story
    lines = []
    while sum(map(len, lines)) < 3 << 19:  # 1.5 MB: the file is read in 1 MB chunks
        lines.append(rng.choice(separators) if rng.random() < 0.2 else
                     rng.choice(not_separators) if rng.random() < 0.02 else "word " * rng.randint(0, 30))
    text = rng.choice(separators) + "\n" + "\n".join(lines)  # a separator on the very first line too
    (tmp_path / "s.txt").write_text(text)
    reference = re.split(r"^<\|endoftext\|>[ \t\r]*$", text, flags=re.MULTILINE)
    documents = documents_of(prepare.txt_pieces([str(tmp_path / "s.txt")]))
    assert documents == [s.strip() for s in reference if s.strip()]  # stripped, empty ones dropped


def book(chars, seed=0):
    """Text like a book's: lines of words, paragraphs, punctuation, some runs of spaces."""
    rng = random.Random(seed)
    words = "Once upon a time there was a little girl named Lily , . ! she  liked 'the park' 42 café".split(" ")
    lines = []
    while sum(map(len, lines)) < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
        lines.append(line + rng.choice(["", "", " ", "\n"]))
    return "\n".join(lines)


@pytest.mark.parametrize("limit", [64, 1000, 4096])
def test_pieces_of_a_long_document_tokenize_exactly_as_the_whole(limit):
    enc = load_gpt2()
    text = book(20_000, seed=limit)
    pieces = list(prepare.document_pieces(text, limit=limit))
    assert len(pieces) > 1 and all(len(piece) <= limit for piece, _ in pieces)
    assert [end for _, end in pieces] == [False] * (len(pieces) - 1) + [True]
    assert "".join(piece for piece, _ in pieces) == text.strip()
    assert [t for piece, _ in pieces for t in enc.encode_ordinary(piece)] == enc.encode_ordinary(text.strip())


def test_text_without_any_whitespace_is_cut_at_the_limit_losslessly():
    # nowhere to cut safely: the pieces are cut at the limit; the tokens of the word spanning each
    # cut may differ from the whole text's, but they decode to exactly the same text
    enc = load_gpt2()
    text = "abcdefghij" * 1000
    pieces = [piece for piece, _ in prepare.document_pieces(text, limit=3000)]
    assert [len(piece) for piece in pieces] == [3000, 3000, 3000, 1000]
    assert enc.decode([t for piece in pieces for t in enc.encode_ordinary(piece)]) == text


def test_a_txt_without_separators_is_read_in_pieces_that_rejoin_to_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "PIECE_CHARS", 2000)  # small pieces and reads: many cuts in a small file
    monkeypatch.setattr(prepare, "READ_CHARS", 3000)
    text = book(60_000, seed=1)
    (tmp_path / "book.txt").write_text("\n\n" + text + "\n<|endoftext|>\n" + "A second document.\n")
    pieces = list(prepare.txt_pieces([str(tmp_path / "book.txt")]))
    assert max(len(piece) for piece, _ in pieces) <= 2 * 2000
    assert documents_of(pieces) == [text.strip(), "A second document."]


def test_batch_encoding_equals_encode_ordinary_per_document():
    enc = load_gpt2()
    documents = ["Once upon a time.", "Émile saw a café 😊!\n\nThe end.", "x", "a\n<|endoftext|>"]
    pieces = [(documents[0], True), ("Émile saw a café", False), (" 😊!\n\nThe end.", True), (documents[2], True)]
    for batch, kept in ((pieces, documents[:3]), (pieces + [(documents[3], True)], documents)):
        # the last document holds the EOT text: the per-piece path
        ids, count, text_bytes = prepare.encode_pieces(batch)
        assert ids.dtype.name == "uint16" and (count, text_bytes) == (len(kept), sum(len(s.encode()) for s in kept))
        assert ids.tolist() == [t for s in kept for t in enc.encode_ordinary(s) + [EOT_TOKEN]]


@pytest.mark.slow
def test_running_out_of_space_while_writing_bin_files_keeps_the_earlier_outputs(tmp_path):
    write_txt(tmp_path / "s.txt", make_stories(50))
    args = ["--input", tmp_path / "s.txt", "--out_dir", tmp_path / "d", "--val_fraction", "0.1"]
    assert run_script("prepare.py", *args).returncode == 0
    before = {name: (tmp_path / "d" / name).read_bytes() for name in ("train.bin", "validation.bin", "meta.json")}
    write_txt(tmp_path / "s.txt", make_stories(2000, seed=4))  # more text than the file-size limit lets through
    full = run_script("prepare.py", *args, "--force", file_size_limit=32 << 10)
    assert_clean_error(full, "cannot write", ".train.bin.tmp", "File too large", "nothing in", "was replaced",
                       "run prepare.py again")
    assert {name: (tmp_path / "d" / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["meta.json", "train.bin", "validation.bin"]


def hub_layout(folder, splits, column="text"):
    """A local folder laid out as a dataset repository on the Hugging Face hub: parquet shards
    under data/ and a README whose `configs` section names the splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    for split, stories in splits.items():
        pq.write_table(pa.table({column: stories, "id": list(range(len(stories)))}),
                       folder / "data" / f"{split}-00000-of-00001.parquet")
    files = "\n".join(f"  - split: {split}\n    path: data/{split}-*" for split in splits)
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n---\n# stories\n")
    return folder


@pytest.mark.slow
def test_a_folder_laid_out_like_a_hub_dataset_loads_by_the_same_call(tmp_path):
    train, val = make_stories(30, seed=5), make_stories(6, seed=6)
    repo = hub_layout(tmp_path / "repo", {"train": train, "validation": val}, column="story")
    result = run_script("prepare.py", "--dataset", repo, "--text_column", "story", "--out_dir", tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert np.fromfile(tmp_path / "d/train.bin", dtype=np.uint16).tolist() == expected_ids(train)
    assert np.fromfile(tmp_path / "d/validation.bin", dtype=np.uint16).tolist() == expected_ids(val)
    meta = json.loads((tmp_path / "d/meta.json").read_text())
    assert meta["dataset"]["name"] == str(repo) and meta["dataset"]["text_column"] == "story"
    assert meta["splits"]["validation"]["source"] == f"{repo}/validation"


@pytest.mark.slow
def test_a_wrong_column_or_split_names_the_ones_that_exist(tmp_path):
    repo = hub_layout(tmp_path / "repo", {"train": make_stories(10), "validation": make_stories(3)})
    assert_clean_error(run_script("prepare.py", "--dataset", repo, "--text_column", "story", "--out_dir", tmp_path / "d"),
                       "has no column 'story'", "its columns: text, id", "--text_column")
    assert_clean_error(run_script("prepare.py", "--dataset", repo, "--val_split", "test", "--out_dir", tmp_path / "d"),
                       "has no split 'test'", "its splits: train, validation", "--val_split")
    assert_clean_error(run_script("prepare.py", "--dataset", tmp_path / "nowhere", "--out_dir", tmp_path / "d"),
                       "cannot load dataset")


@pytest.mark.slow
def test_without_a_validation_split_a_fraction_is_held_out_and_max_stories_reads_a_prefix(tmp_path):
    stories = make_stories(200, seed=7)
    repo = hub_layout(tmp_path / "repo", {"train": stories})
    result = run_script("prepare.py", "--dataset", repo, "--max_stories", "100", "--val_fraction", "0.1",
                        "--out_dir", tmp_path / "d")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "d/meta.json").read_text())
    assert (meta["splits"]["train"]["stories"], meta["splits"]["validation"]["stories"]) == (90, 10)
    assert meta["dataset"]["max_stories"] == 100
    held = [s for i, s in enumerate(stories[:100]) if int((i + 1) * 0.1) > int(i * 0.1)]
    assert np.fromfile(tmp_path / "d/validation.bin", dtype=np.uint16).tolist() == expected_ids(held)


@pytest.mark.slow
def test_a_txt_with_no_separators_is_one_document_tokenized_as_a_whole(tmp_path):
    text = book(300_000, seed=2)  # several pieces of PIECE_CHARS, tokenized by different workers
    (tmp_path / "book.txt").write_text(text)
    write_txt(tmp_path / "val.txt", make_stories(3))
    result = run_script("prepare.py", "--input", tmp_path / "book.txt", "--val_input", tmp_path / "val.txt",
                        "--out_dir", tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert np.fromfile(tmp_path / "d/train.bin", dtype=np.uint16).tolist() == expected_ids([text.strip()])
    assert json.loads((tmp_path / "d/meta.json").read_text())["splits"]["train"]["stories"] == 1


def test_a_folder_holding_data_from_other_text_is_refused_not_kept(tiny_data, tmp_path):
    data = copy_of(tiny_data, tmp_path)
    write_txt(tmp_path / "other.txt", make_stories(20, seed=4))
    result = run_in_process("prepare.py", "--input", tmp_path / "other.txt", "--out_dir", data)
    assert_clean_error(result, "already holds data made from local files", f"not from local files {tmp_path / 'other.txt'}",
                       "--force")
    same = run_in_process("prepare.py", "--input", tiny_data.parent / "stories.txt", "--out_dir", data,
                          "--val_fraction", "0.1")
    assert same.returncode == 0 and "skipping" in same.stdout, same.stderr
