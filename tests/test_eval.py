"""eval.py: one deterministic pass over a whole split, every target token counted once."""
import json
import math
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT, assert_clean_error, run_in_process, run_script
from model import GPT, GPTConfig

import eval as evaluation  # the module, not the builtin

BLOCK = 16
VOCAB = 50257


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.1)).eval()


def write_run_and_data(tmp_path, val_tokens):
    """A saved run (as train.py writes it) and a data folder (as prepare.py writes it)."""
    model = tiny_model()
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    torch.save(model.state_dict(), out / "best_model_params.pt")
    model_args = {k: getattr(model.config, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                                                         "dropout", "bias")}
    (out / "config.json").write_text(json.dumps({"model_args": model_args, "config": {}}))
    splits = {"train": np.arange(200, dtype=np.uint16), "validation": val_tokens.astype(np.uint16)}
    for split, tokens in splits.items():
        tokens.tofile(data / f"{split}.bin")
    meta = {"tokenizer": "gpt2", "vocab_size": VOCAB, "eot_token": 50256, "dtype": "uint16",
            "splits": {split: {"stories": 1, "tokens": len(t), "text_bytes": 4 * len(t)} for split, t in splits.items()}}
    (data / "meta.json").write_text(json.dumps(meta))
    return model


def reference_pass(model, tokens):
    """The definition, one window at a time with no batching or padding: summed nats, targets."""
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, BLOCK):
            window = torch.tensor(tokens[start:start + BLOCK + 1].astype(np.int64))
            logits, _ = model(window[None, :-1])
            nats += F.cross_entropy(logits[0], window[1:], reduction="sum").item()
            count += len(window) - 1
    return nats, count


def random_tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.uint16)


@pytest.mark.parametrize("n", [BLOCK * 5 + 1, BLOCK * 5 + 6, BLOCK + 2])
def test_every_target_is_counted_once_and_matches_the_definition(n):
    model, tokens = tiny_model(), random_tokens(n)
    expected_nats, expected_count = reference_pass(model, tokens)
    for batch_size in (1, 2, 64):  # batching (and the padded last window) changes nothing
        nats, count = evaluation.evaluate(model, tokens, batch_size, "cpu")
        assert count == n - 1 == expected_count
        assert nats == pytest.approx(expected_nats, rel=1e-5)


def run_eval(*args):
    return run_script("eval.py", "--device", "cpu", *args, cwd=ROOT)


@pytest.mark.slow
def test_cli_reports_the_full_pass_and_the_same_numbers_twice(tmp_path):
    tokens = random_tokens(BLOCK * 7 + 3, seed=1)
    model = write_run_and_data(tmp_path, tokens)
    args = ("--out_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path / "data"), "--batch_size", "3")
    first, second = run_eval(*args), run_eval(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout

    found = re.search(r"loss ([\d.]+) \| perplexity ([\d.]+) \| ([\d.]+) bits/byte \| ([\d,]+) tokens evaluated",
                      first.stdout)
    assert found, first.stdout
    nats, count = reference_pass(model, tokens)
    loss = nats / count
    assert int(found[4].replace(",", "")) == len(tokens) - 1
    assert float(found[1]) == pytest.approx(loss, abs=1e-4)
    assert float(found[2]) == pytest.approx(math.exp(loss), abs=0.01)
    assert float(found[3]) == pytest.approx(loss / math.log(2) / 4, abs=1e-4)  # meta: 4 bytes per token


@pytest.mark.slow
def test_max_tokens_reads_a_prefix(tmp_path):
    tokens = random_tokens(BLOCK * 7 + 3, seed=2)
    model = write_run_and_data(tmp_path, tokens)
    result = run_eval("--out_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path / "data"), "--max_tokens", "40")
    assert result.returncode == 0, result.stderr
    assert "the first 40 of 115" in result.stdout and "39 tokens evaluated" in result.stdout
    loss = float(re.search(r"loss ([\d.]+)", result.stdout)[1])
    nats, count = reference_pass(model, tokens[:40])
    assert loss == pytest.approx(nats / count, abs=1e-4)


def loss_printed(result):
    assert result.returncode == 0, result.stderr
    return float(re.search(r"^loss ([\d.]+) \|", result.stdout, re.MULTILINE)[1])


def test_split_train_evaluates_the_training_tokens(tmp_path):
    model = write_run_and_data(tmp_path, random_tokens(BLOCK * 4))  # a validation split unlike train's
    result = run_in_process("eval.py", "--device", "cpu", "--out_dir", tmp_path / "out", "--data_dir",
                            tmp_path / "data", "--split", "train")
    nats, count = reference_pass(model, np.arange(200, dtype=np.uint16))  # train.bin
    assert loss_printed(result) == pytest.approx(nats / count, abs=1e-4)  # printed to 4 decimals
    assert f"{tmp_path / 'data'}/train.bin, windows of {BLOCK} tokens" in result.stdout
    assert f"{count} tokens evaluated" in result.stdout


def test_checkpoint_evaluates_those_weights_instead_of_the_runs_best(tmp_path):
    tokens = random_tokens(BLOCK * 4)
    write_run_and_data(tmp_path, tokens)  # out/best_model_params.pt: the weights not to evaluate
    torch.manual_seed(1)
    other = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)).eval()
    (tmp_path / "elsewhere").mkdir()
    torch.save({"model": other.state_dict(), "model_args": vars(other.config)}, tmp_path / "elsewhere" / "ckpt.pt")
    result = run_in_process("eval.py", "--device", "cpu", "--out_dir", tmp_path / "out", "--data_dir",
                            tmp_path / "data", "--checkpoint", tmp_path / "elsewhere" / "ckpt.pt")
    nats, count = reference_pass(other, tokens)
    assert loss_printed(result) == pytest.approx(nats / count, abs=1e-4)
    assert result.stdout.startswith(f"{tmp_path / 'elsewhere' / 'ckpt.pt'} on ")


def test_without_data_dir_it_reads_the_data_the_run_trained_on(tmp_path):
    tokens = random_tokens(BLOCK * 4)
    model = write_run_and_data(tmp_path, tokens)
    run_config = json.loads((tmp_path / "out/config.json").read_text())
    run_config["config"]["data_dir"] = str(tmp_path / "data")  # as train.py records it
    (tmp_path / "out/config.json").write_text(json.dumps(run_config))
    result = run_in_process("eval.py", "--device", "cpu", "--out_dir", tmp_path / "out")
    nats, count = reference_pass(model, tokens)
    assert loss_printed(result) == pytest.approx(nats / count, abs=1e-4)
    assert f" on {tmp_path / 'data'}/validation.bin" in result.stdout


def test_missing_inputs_are_one_line_errors(tmp_path):
    write_run_and_data(tmp_path, random_tokens(100))
    result = run_in_process("eval.py", "--device", "cpu", "--out_dir", tmp_path / "out",
                            "--data_dir", tmp_path / "nowhere")
    assert_clean_error(result, "meta.json not found")
    result = run_in_process("eval.py", "--device", "cpu", "--out_dir", tmp_path / "nowhere",
                            "--data_dir", tmp_path / "data")
    assert_clean_error(result, "does not exist")
