"""Fine-tuning: train.py --init_from=<a run, a checkpoint, a Hugging Face GPT-2 folder, or gpt2>
starts a new run from trained weights, with their architecture."""
import csv
import json
import os

import pytest
import torch

import checkpoint
import config
from common import UserError
from conftest import (ROOT, TINY_RUN, assert_clean_error, assert_same_optimizer_states, copy_of, run_in_process,
                      run_script)
from data import eval_rng, get_batch
from export import write_safetensors
from model import GPT, GPTConfig
from test_ddp import FLAGS as DDP_FLAGS, TOLERANCE as DDP_TOLERANCE, torchrun
from test_train_gpu_path import BF16_STEP0_TOLERANCE, FAST_LEARNING, eval_losses
from checkpoint import fine_tune_model_args, load_fine_tune_weights, lock_out_dir

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers must never try the network in these tests
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402  (after HF_HUB_OFFLINE)

# the tiny run's flags without the architecture: a fine-tune takes it from its source
RUN = [f for f in TINY_RUN if not f.startswith(("--n_layer", "--n_head", "--n_embd", "--block_size"))]


def save_hf_gpt2(folder, layout="safetensors", vocab_size=50257, n_positions=64):
    """A tiny random GPT2LMHeadModel saved as a Hugging Face folder; the model, in eval mode.

    layout: 'safetensors' (save_pretrained), 'sharded' (save_pretrained's shards of a big model, and
    their index), 'bin' (pytorch_model.bin, as save_pretrained(..., safe_serialization=False) writes
    it), or 'openai' (the names of OpenAI's files on the hub:
    no `transformer.` prefix, and the causal-mask buffers `attn.bias`). Every weight is perturbed,
    so that a mix-up of any tensor's name or layout shows in the logits."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=None, eos_token_id=None))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="2MB")  # the token embedding alone is 6.4 MB
    elif layout == "bin":
        model.save_pretrained(folder, safe_serialization=False)
        if not os.path.isfile(os.path.join(folder, "pytorch_model.bin")):  # transformers 5 writes safetensors only
            os.remove(os.path.join(folder, "model.safetensors"))
            torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    else:
        model.config.save_pretrained(folder)
        tensors = {k.removeprefix("transformer."): v.detach().clone() for k, v in model.state_dict().items()
                   if k != "lm_head.weight"}
        for i in range(2):
            tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions)
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    return model.eval()


def our_model(source, block_size=None, dropout=0.0):
    """Our GPT with the weights of `source`, as train.py builds a fine-tune's model."""
    state_dict, architecture, record = checkpoint.load_init_weights(str(source))
    args = {**architecture, "dropout": dropout, "block_size": block_size or architecture["block_size"]}
    model = GPT(GPTConfig(**args))
    load_fine_tune_weights(model, state_dict, str(source))
    return model.eval(), record


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin", "openai"])
def test_a_hugging_face_gpt2_folder_gives_transformers_logits(tmp_path, layout):
    theirs = save_hf_gpt2(tmp_path / "hf", layout)
    ours, record = our_model(tmp_path / "hf")
    assert ours.config.n_layer == 2 and ours.config.n_embd == 32 and ours.config.block_size == 64
    tokens = torch.randint(0, 50257, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(tokens)[0] - theirs(tokens).logits).abs().max().item() < 1e-5
    weights = {"bin": "pytorch_model.bin", "sharded": "model.safetensors.index.json"}.get(layout, "model.safetensors")
    assert record["file"] == str(tmp_path / "hf" / weights)
    files = [record["file"]]
    if layout == "sharded":  # the sha256 of every shard, in order
        files = sorted(str(path) for path in tmp_path.glob("hf/model-*-of-*.safetensors"))
        assert len(files) > 1
    assert record["sha256"] == checkpoint.sha256(*files) and len(record["sha256"]) == 64


def test_a_shorter_block_size_crops_the_position_table(tmp_path):
    theirs = save_hf_gpt2(tmp_path / "hf")
    ours, _ = our_model(tmp_path / "hf", block_size=16)
    assert torch.equal(ours.transformer.wpe.weight, theirs.transformer.wpe.weight[:16])
    tokens = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours(tokens)[0] - theirs(tokens).logits).abs().max().item() < 1e-5


def test_the_architecture_comes_from_the_source_and_a_flag_against_it_is_refused():
    gpt2 = dict(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32, bias=True)
    source = checkpoint.architecture_of(gpt2)  # as load_init_weights reads a GPT-2 folder

    def model_args(*flags):
        given = set()
        return fine_tune_model_args(config.parse_args(["--init_from=hf", *flags], given), given, source, "hf")

    gpt2_options = dict(pos_emb="learned", qk_norm=False, mlp="gelu", zero_init_proj=False)  # (not in a GPT-2 file)
    # config.py's n_layer=6 etc. do not count, only what a flag or preset sets
    assert model_args("--dropout=0.2") == {**gpt2, **gpt2_options, "dropout": 0.2}
    assert model_args("--block_size=32", "--n_layer=2")["block_size"] == 32
    with pytest.raises(UserError, match="--n_layer=3 but hf has n_layer=2; --bias=False but hf has bias=True"):
        model_args("--n_layer=3", "--bias=false")
    with pytest.raises(UserError, match="--qk_norm=True but hf has qk_norm=False"):
        model_args("--qk_norm=true")
    with pytest.raises(UserError, match="--n_embd=384 but hf has n_embd=32"):
        model_args(os.path.join(ROOT, "presets", "seed.py"), "--init_from=hf")  # a preset's architecture counts too
    with pytest.raises(UserError, match="--block_size=65 is longer than the 64 positions of hf"):
        model_args("--block_size=65")


def test_a_run_with_the_modern_block_is_fine_tuned_with_its_options_and_weights(tmp_path):
    options = dict(pos_emb="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, bias=False)
    args = dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **options)
    torch.manual_seed(0)
    source = GPT(GPTConfig(**args))
    with torch.no_grad():  # trained weights: the zero-initialized projections are not zero any more
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoint.save(source.state_dict(), str(tmp_path / "best_model_params.pt"))
    (tmp_path / "config.json").write_text(json.dumps({"model_args": args}))
    ours, _ = our_model(tmp_path)  # no position table to crop, and the options of the run
    assert {k: getattr(ours.config, k) for k in options} == options
    assert ours.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(t, source.state_dict()[k]) for k, t in ours.state_dict().items())
    given = set()
    cfg = config.parse_args([f"--init_from={tmp_path}", "--pos_emb=learned"], given)
    with pytest.raises(UserError, match="--pos_emb=learned but .* has pos_emb=rope"):
        fine_tune_model_args(cfg, given, checkpoint.load_init_weights(str(tmp_path))[1], str(tmp_path))


def test_a_gpt2_config_that_model_py_cannot_be_is_refused(tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_config, "activation_function": "relu"}))
    with pytest.raises(UserError, match="activation_function='relu'"):
        checkpoint.load_init_weights(str(tmp_path / "hf"))
    with pytest.raises(UserError, match="not scratch, resume, an existing file or folder, or one of gpt2"):
        checkpoint.load_init_weights(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="holds neither best_model_params.pt"):
        checkpoint.load_init_weights(str(tmp_path))


def test_a_broken_shard_index_or_a_missing_shard_is_one_line(tmp_path):
    save_hf_gpt2(tmp_path / "hf", "sharded")
    index = tmp_path / "hf" / "model.safetensors.index.json"
    first_shard = min(tmp_path.glob("hf/model-*-of-*.safetensors"))
    first_shard.unlink()
    with pytest.raises(UserError, match=f"cannot read {first_shard}: No such file"):
        checkpoint.load_init_weights(str(tmp_path / "hf"))
    index.write_text('{"weight_map": ')
    with pytest.raises(UserError, match="is not a readable index of weight shards .*save the model again"):
        checkpoint.load_init_weights(str(tmp_path / "hf"))


# ----------------------------------------------------------------------------- train.py, as a user runs it

def train(tiny_data, out_dir, *flags, run=run_script):
    return run("train.py", f"--data_dir={tiny_data}", f"--out_dir={out_dir}", *flags)


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_step_0_loss_of_a_hugging_face_model_is_transformers_loss_on_the_same_windows(tiny_data, tmp_path):
    theirs = save_hf_gpt2(tmp_path / "hf")
    result = train(tiny_data, tmp_path / "out", *RUN, f"--init_from={tmp_path / 'hf'}", "--block_size=32",
                   "--max_iters=0")
    assert result.returncode == 0, result.stderr
    assert "architecture from them, n_layer=2, n_head=2, n_embd=32, bias=True, vocab_size=50257, " \
           "block_size=32 of its 64 positions" in result.stdout
    row = metrics(tmp_path / "out")[0]
    cfg = config.parse_args([f"--data_dir={tiny_data}", *RUN, "--block_size=32"])
    for split_index, (split, column) in enumerate((("train", "train_loss"), ("validation", "val_loss"))):
        rng, losses = eval_rng(cfg.seed, split_index, 0), []
        for _ in range(cfg.eval_iters):  # estimate_loss's windows; transformers shifts the labels itself
            x, y = get_batch(tiny_data, split, cfg.batch_size, cfg.block_size, rng, "cpu")
            window = torch.cat([x, y[:, -1:]], dim=1)
            with torch.no_grad():
                losses.append(theirs(window, labels=window).loss.item())
        assert abs(float(row[column]) - sum(losses) / len(losses)) < 1e-5, split
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_args"] == dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1,
                                       bias=True, pos_emb="learned", qk_norm=False, mlp="gelu", zero_init_proj=False)
    assert saved["init"]["source"] == str(tmp_path / "hf")
    assert saved["init"]["sha256"] == checkpoint.sha256(tmp_path / "hf" / "model.safetensors")
    assert checkpoint.load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))["init"] == saved["init"]


@pytest.mark.slow
def test_a_run_exported_and_fine_tuned_starts_at_the_runs_own_weights_and_loss(tiny_data, trained_run, tmp_path):
    source = trained_run
    best = torch.load(source / "best_model_params.pt", weights_only=True)
    best_loss = checkpoint.load_checkpoint(str(source / "ckpt.pt"))["best_val_loss"]
    exported = run_script("export.py", "--out_dir", source, "--to", tmp_path / "hf")
    assert exported.returncode == 0, exported.stderr
    for name, init in (("folder", source), ("best", source / "best_model_params.pt"), ("exported", tmp_path / "hf")):
        result = train(tiny_data, tmp_path / name, *RUN, f"--init_from={init}", "--max_iters=0")
        assert result.returncode == 0, (name, result.stderr)
        started = torch.load(tmp_path / name / "best_model_params.pt", weights_only=True)
        assert all(torch.equal(started[k], best[k]) for k in best), name
        assert checkpoint.load_checkpoint(str(tmp_path / name / "ckpt.pt"))["best_val_loss"] == best_loss, name
    # ckpt.pt holds the run's latest weights, not its best: a fine-tune from it starts from those
    latest = checkpoint.load_checkpoint(str(source / "ckpt.pt"))["model"]
    state_dict, _, record = checkpoint.load_init_weights(str(source / "ckpt.pt"))
    assert all(torch.equal(state_dict[k], latest[k]) for k in latest) and record["file"] == str(source / "ckpt.pt")


@pytest.mark.slow
def test_sample_eval_and_export_work_on_a_fine_tuned_run(tiny_data, tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    result = train(tiny_data, tmp_path / "out", *RUN, f"--init_from={tmp_path / 'hf'}", "--max_iters=2",
                   "--eval_interval=1")
    assert result.returncode == 0, result.stderr
    ours = checkpoint.load_model(str(tmp_path / "out" / "best_model_params.pt")).eval()
    assert ours.config.block_size == 64 and ours.config.n_layer == 2
    sampled = run_script("sample.py", "--out_dir", tmp_path / "out", "--max_new_tokens=5", "--device=cpu")
    assert sampled.returncode == 0 and sampled.stdout.strip(), sampled.stderr
    evaluated = run_script("eval.py", "--out_dir", tmp_path / "out", "--data_dir", tiny_data, "--device=cpu")
    assert evaluated.returncode == 0 and "windows of 64 tokens" in evaluated.stdout, evaluated.stderr
    exported = run_script("export.py", "--out_dir", tmp_path / "out", "--to", tmp_path / "hf2")
    assert exported.returncode == 0, exported.stderr
    tokens = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf2").eval()
        assert (ours(tokens)[0] - theirs(tokens).logits).abs().max().item() < 1e-5


@pytest.mark.slow
def test_wrong_vocabulary_architecture_flags_and_a_hub_name_offline_are_one_line_and_write_nothing(
        tiny_data, tmp_path, monkeypatch):
    save_hf_gpt2(tmp_path / "small", vocab_size=1000)
    # refused before any work: train.py's main() runs in this process (see test_errors.py)
    assert_clean_error(train(tiny_data, tmp_path / "out", *RUN, f"--init_from={tmp_path / 'small'}",
                             run=run_in_process),
                       "the data's vocabulary (50257 tokens", "does not fit the model's (1000 tokens")
    save_hf_gpt2(tmp_path / "hf")
    assert_clean_error(train(tiny_data, tmp_path / "out", *RUN, f"--init_from={tmp_path / 'hf'}", "--n_head=4",
                             run=run_in_process),
                       "--n_head=4 but", "has n_head=2", "leave these flags out")
    # a program: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    assert_clean_error(train(tiny_data, tmp_path / "out", *RUN, "--init_from=gpt2"),
                       "gpt2 is not in the Hugging Face cache", "hf download gpt2", "--init_from=models/gpt2")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_fine_tune_into_a_busy_or_earlier_run_or_its_own_source_folder_is_refused(tiny_data, trained_run, tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    fine_tune = [*RUN, f"--init_from={tmp_path / 'hf'}", "--max_iters=1", "--eval_interval=1"]
    copy_of(trained_run, tmp_path, "earlier")
    before = (tmp_path / "earlier" / "ckpt.pt").read_bytes()
    assert_clean_error(train(tiny_data, tmp_path / "earlier", *fine_tune, run=run_in_process), "already holds a run",
                       "--overwrite=true")
    assert (tmp_path / "earlier" / "ckpt.pt").read_bytes() == before
    assert_clean_error(train(tiny_data, tmp_path / "earlier", *RUN, f"--init_from={tmp_path / 'earlier'}",
                             "--overwrite=true", run=run_in_process), "whose files this run would replace",
                       "another --out_dir")
    assert (tmp_path / "earlier" / "ckpt.pt").read_bytes() == before
    os.makedirs(tmp_path / "busy")
    lock = lock_out_dir(str(tmp_path / "busy"))  # as a train.py running there holds it
    try:
        assert_clean_error(train(tiny_data, tmp_path / "busy", *fine_tune, run=run_in_process),
                           "is in use by another train.py")
    finally:
        lock.close()
    assert not (tmp_path / "busy" / "ckpt.pt").exists()
    assert train(tiny_data, tmp_path / "earlier", *fine_tune, "--overwrite=true").returncode == 0


@pytest.mark.slow
def test_resuming_a_fine_tune_is_bit_identical_to_an_uninterrupted_one(tiny_data, tmp_path):
    # Muon: both optimizers' states (AdamW's for the embeddings); each alone is resumed in test_train.py
    save_hf_gpt2(tmp_path / "hf")
    flags = [*RUN, "--max_iters=6", "--eval_interval=3", "--dropout=0.1", "--block_size=32", "--optimizer=muon"]
    straight = train(tiny_data, tmp_path / "straight", f"--init_from={tmp_path / 'hf'}", *flags)
    assert straight.returncode == 0, straight.stderr
    first = train(tiny_data, tmp_path / "split", f"--init_from={tmp_path / 'hf'}", *flags, "--max_iters=3")
    assert first.returncode == 0, first.stderr
    # the architecture flags are not repeated: a resumed fine-tune keeps its source's
    second = train(tiny_data, tmp_path / "split", "--init_from=resume", *[f for f in flags if "block_size" not in f])
    assert second.returncode == 0, second.stderr
    a = checkpoint.load_checkpoint(str(tmp_path / "straight/ckpt.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "split/ckpt.pt"))
    assert a["step"] == b["step"] == 6 and a["init"] == b["init"] and a["init"]["source"] == str(tmp_path / "hf")
    assert a["model_args"] == b["model_args"] and a["model_args"]["block_size"] == 32
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert_same_optimizer_states(a, b)
    strip_time = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip_time(metrics(tmp_path / "straight")) == strip_time(metrics(tmp_path / "split"))
    assert json.loads((tmp_path / "split" / "config.json").read_text())["init"] == a["init"]


# ----------------------------------------------------------------------------- the GPU path: DDP, bf16, compile

@pytest.mark.slow
def test_a_fine_tune_under_torchrun_matches_one_process(tiny_data, tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    # DDP_FLAGS name the source's own n_layer/n_head/n_embd, which a fine-tune accepts
    flags = [f"--data_dir={tiny_data}", *DDP_FLAGS, f"--init_from={tmp_path / 'hf'}", "--max_iters=2"]
    ddp = torchrun(*flags, f"--out_dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr
    assert "starting from the weights of" in ddp.stdout and "2 process(es)" in ddp.stdout
    single = run_script("train.py", *flags, f"--out_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    ddp_state = checkpoint.load_checkpoint(str(tmp_path / "ddp/ckpt.pt"))
    single_state = checkpoint.load_checkpoint(str(tmp_path / "single/ckpt.pt"))
    assert ddp_state["step"] == 2 and ddp_state["init"] == single_state["init"]
    assert ddp_state["init"]["source"] == str(tmp_path / "hf")
    worst = max((ddp_state["model"][k] - v).abs().max().item() for k, v in single_state["model"].items())
    assert worst < DDP_TOLERANCE, worst


@pytest.mark.slow
def test_a_fine_tune_with_muon_bf16_autocast_and_compile_starts_at_the_sources_loss_and_trains(tiny_data, tmp_path):
    # (also the one run of Muon's step under autocast and torch.compile)
    save_hf_gpt2(tmp_path / "hf")
    flags = [*RUN, f"--init_from={tmp_path / 'hf'}", "--block_size=32", "--dropout=0", *FAST_LEARNING,
             "--optimizer=muon"]
    fp32 = train(tiny_data, tmp_path / "fp32", *flags, "--max_iters=0", "--dtype=float32")
    bf16 = train(tiny_data, tmp_path / "bf16", *flags, "--max_iters=6", "--eval_interval=6", "--dtype=bfloat16",
                 "--compile=true")
    assert fp32.returncode == 0, fp32.stderr
    assert bf16.returncode == 0, bf16.stderr
    assert "bfloat16, compile True" in bf16.stdout and "optimizer muon" in bf16.stdout
    losses = eval_losses(bf16.stdout)
    # the source's weights at step 0: only bf16 rounding separates its loss from float32's
    assert abs(losses[0] - eval_losses(fp32.stdout)[0]) < BF16_STEP0_TOLERANCE, (losses, fp32.stdout)
    assert losses[6] < losses[0] - 0.5, losses  # finite and falling
    best = torch.load(tmp_path / "bf16" / "best_model_params.pt", weights_only=True)
    assert all(not k.startswith("_orig_mod.") for k in best)  # saved as the plain model, ready for sample.py
