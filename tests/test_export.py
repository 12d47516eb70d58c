"""export.py writes a folder that transformers loads as the same model."""
import json
import os

import pytest
import torch

from conftest import ROOT, assert_clean_error, run_in_process, run_script, run_script_reporting_imports
from model import GPT, GPTConfig

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers must never try the network in these tests
from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: E402  (after HF_HUB_OFFLINE)


def save_run(out_dir, bias=True, block_size=32):
    """A small random GPT saved as train.py saves a run: best_model_params.pt + config.json.

    Every weight is perturbed, so biases and LayerNorms are not at their zero / one init and a
    mix-up of any tensor's name or layout shows in the logits."""
    torch.manual_seed(0)
    model_args = dict(vocab_size=50257, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.1, bias=bias)
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "best_model_params.pt"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"model_args": model_args, "config": {}}, f)
    return model.eval()


def export(*args):
    return run_script("export.py", *args, cwd=ROOT)


@pytest.mark.slow
def test_export_needs_neither_transformers_nor_safetensors(tmp_path):
    save_run(tmp_path / "out")
    result, _ = run_script_reporting_imports("export.py", "--out_dir", tmp_path / "out", "--to", tmp_path / "hf",
                                             hidden=("transformers", "safetensors"))
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "hf"))


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False])
def test_exported_model_matches_ours(tmp_path, bias):
    ours = save_run(tmp_path / "out", bias=bias)
    result = export("--out_dir", str(tmp_path / "out"), "--to", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(os.listdir(tmp_path / "hf"))

    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert theirs.dtype == torch.float32
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()  # tied, as ours
    tokens = torch.randint(0, 50257, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours_logits, _ = ours(tokens)
        their_logits = theirs(tokens).logits
    assert (ours_logits - their_logits).abs().max().item() < 1e-5

    prompt = tokens[:, :5]
    ours_greedy = ours.generate(prompt, 20, temperature=0)
    theirs.generation_config.eos_token_id = None  # ours does not stop at end-of-text either
    their_greedy = theirs.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                                   attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours_greedy, their_greedy)


@pytest.mark.slow
def test_exported_tokenizer_is_gpt2(tmp_path):
    import tokenizer

    save_run(tmp_path / "out")
    assert export("--out_dir", str(tmp_path / "out"), "--to", str(tmp_path / "hf")).returncode == 0
    text = "Once upon a time, Lily saw a big dog. \"Hello!\" she said."
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.encode(text) == tokenizer.load_gpt2().encode_ordinary(text)
    assert hf_tokenizer.eos_token_id == tokenizer.EOT_TOKEN


@pytest.mark.slow
def test_export_from_full_checkpoint(tmp_path):
    """ckpt.pt carries its architecture, and torch.compile's `_orig_mod.` prefix is stripped."""
    ours = save_run(tmp_path / "out")
    state = {"_orig_mod." + k: v for k, v in ours.state_dict().items()}
    with open(tmp_path / "out" / "config.json") as f:
        model_args = json.load(f)["model_args"]
    torch.save({"model": state, "model_args": model_args}, tmp_path / "ckpt.pt")
    result = export("--checkpoint", str(tmp_path / "ckpt.pt"), "--to", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours(tokens)[0] - theirs(tokens).logits).abs().max().item() < 1e-5


@pytest.mark.slow
def test_export_refuses_a_nonempty_folder_and_a_missing_checkpoint(tmp_path):
    save_run(tmp_path / "out")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    result = run_in_process("export.py", "--out_dir", tmp_path / "out", "--to", tmp_path / "hf")
    assert_clean_error(result, "not empty", "--force")
    assert export("--out_dir", str(tmp_path / "out"), "--to", str(tmp_path / "hf"), "--force").returncode == 0
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"

    result = run_in_process("export.py", "--out_dir", tmp_path / "nowhere", "--to", tmp_path / "hf2")
    assert_clean_error(result, "does not exist")
    assert not (tmp_path / "hf2").exists()
