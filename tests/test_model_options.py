"""The modern block's model options (pos_emb="rope", qk_norm, mlp="relu2", zero_init_proj): each
changes the model as it says, each trains, the RoPE cache slides by one token past block_size,
and the scripts (train, resume, sample, eval, export) work with presets/modern.py's model."""
import contextlib
import functools
import json
import os

import pytest
import torch
from torch.nn import functional as F

import checkpoint
import config
from common import UserError
from conftest import MODERN, ROOT, TINY_RUN, assert_clean_error, assert_same_optimizer_states, run_script
from model import GPT, GPTConfig, apply_rotary
from checkpoint import resume, rng_state
from optimizers import make_optimizers, set_learning_rates
from train import scratch_model_args, train_step, training_batch

SMALL = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
OPTIONS = [dict(pos_emb="rope"), dict(qk_norm=True), dict(mlp="relu2"), dict(zero_init_proj=True), MODERN]


def small_model(seed=0, perturb=True, **options):
    """A small GPT with the options; perturbed, so that zero-initialized projections are not zero."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SMALL, **options})).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- each option

def test_rope_has_no_position_table_and_the_same_parameters_otherwise():
    gpt2, rope = GPT(GPTConfig(**SMALL)), GPT(GPTConfig(**SMALL, pos_emb="rope"))
    assert "wpe" not in rope.transformer and not any("wpe" in name for name in rope.state_dict())
    assert set(gpt2.state_dict()) - set(rope.state_dict()) == {"transformer.wpe.weight"}
    assert rope.num_params() == rope.num_params(non_embedding=True) == gpt2.num_params(non_embedding=True)
    assert rope.flops_per_token() == gpt2.flops_per_token()
    assert [p.shape for p in rope.hidden_matrices()] == [p.shape for p in gpt2.hidden_matrices()]


def test_rotary_query_key_products_depend_only_on_the_distance_between_positions():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def product(m, n):
        return (apply_rotary(q, torch.tensor([m])) * apply_rotary(k, torch.tensor([n]))).sum()

    torch.testing.assert_close(product(0, 0), (q * k).sum())  # position 0 is not rotated
    for m, n in ((5, 2), (9, 9), (3, 7)):
        for shift in (1, 40, 1000):
            torch.testing.assert_close(product(m + shift, n + shift), product(m, n), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(product(5, 2), product(5, 3), atol=1e-3)  # the distance does matter


def test_with_rope_the_whole_model_is_invariant_to_shifting_all_positions():
    model = small_model(pos_emb="rope")
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.hidden_states(idx)
        shifted = model.hidden_states(idx, pos=torch.arange(16) + 1000)
    torch.testing.assert_close(shifted, plain, rtol=1e-4, atol=1e-4)
    gpt2 = small_model()
    with torch.no_grad():  # learned positions are absolute
        assert not torch.allclose(gpt2.hidden_states(idx), gpt2.hidden_states(idx, pos=torch.arange(16).flip(0)))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(qk_norm):
    model = small_model(qk_norm=qk_norm)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(idx)[0]
        for block in model.transformer.h:  # scale the query and key rows of c_attn (and their biases) by 10
            block.attn.c_attn.weight[:64].mul_(10)
            block.attn.c_attn.bias[:64].mul_(10)
        after = model(idx)[0]
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4) == qk_norm


def test_relu2_mlp_is_the_square_of_relu():
    model = small_model(mlp="relu2")
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
        assert not torch.allclose(mlp(x), mlp.c_proj(F.gelu(mlp.c_fc(x), approximate="tanh")))


def test_zero_init_projections_start_at_zero_so_every_block_starts_as_the_identity():
    model = small_model(perturb=False, zero_init_proj=True)
    projections = [p for name, p in model.named_parameters() if name.endswith("c_proj.weight")]
    assert len(projections) == 2 * SMALL["n_layer"] and all(torch.count_nonzero(p) == 0 for p in projections)
    others = [p for name, p in model.named_parameters() if name.endswith(("c_attn.weight", "c_fc.weight"))]
    assert all(abs(p.std().item() - 0.02) < 0.005 for p in others)  # the rest initialized as GPT-2
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embedded = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(16))
        torch.testing.assert_close(model.hidden_states(idx), model.transformer.ln_f(embedded))
    assert all(torch.count_nonzero(p) > 0 for name, p in small_model(perturb=False).named_parameters()
               if name.endswith("c_proj.weight"))  # the default stays GPT-2's


def test_a_file_saved_with_a_removed_option_on_is_refused_with_one_line(tmp_path):
    model_args = {**SMALL, "x0_skip": True, "logit_softcap": 15.0}
    torch.save({"model": small_model().state_dict(), "model_args": model_args}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"trained with x0_skip=True, logit_softcap=15.0, a model option this kit no "
                                        r"longer has"):
        checkpoint.load_model(str(tmp_path / "ckpt.pt"))
    torch.save({"model": small_model().state_dict(), "model_args": {**SMALL, "x0_skip": False, "logit_softcap": 0.0}},
               tmp_path / "off.pt")  # saved with them off: the model of today
    assert checkpoint.load_model(str(tmp_path / "off.pt")).config == GPTConfig(**SMALL)


def test_the_options_default_to_gpt2_and_an_unknown_value_is_refused():
    assert {k: getattr(GPTConfig(), k) for k in ("pos_emb", "qk_norm", "mlp", "zero_init_proj", "bias")} == \
        dict(pos_emb="learned", qk_norm=False, mlp="gelu", zero_init_proj=False, bias=True)
    with pytest.raises(ValueError, match="pos_emb='alibi'"):
        GPT(GPTConfig(**SMALL, pos_emb="alibi"))
    with pytest.raises(UserError, match="--mlp='swiglu' must be one of: gelu, relu2"):
        config.parse_args(["--mlp=swiglu"])
    with pytest.raises(UserError, match="--pos_emb='alibi' must be one of: learned, rope"):
        config.parse_args(["--pos_emb=alibi"])


@pytest.mark.parametrize("options,optimizer", [(options, "adamw") for options in OPTIONS] + [(MODERN, "muon")],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) if isinstance(o, dict) else o)
def test_each_option_trains_a_tiny_model(tiny_data, options, optimizer):
    flags = [f"--{k}={v}" for k, v in options.items()]
    cfg = config.parse_args([f"--data_dir={tiny_data}", f"--optimizer={optimizer}", "--block_size=32",
                             "--n_layer=2", "--n_head=2", "--n_embd=32", "--batch_size=8", "--dropout=0",
                             "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=2", "--lr_decay_iters=12",
                             *flags])
    torch.manual_seed(0)
    model = GPT(GPTConfig(**scratch_model_args(cfg, 50257)))
    assert all(getattr(model.config, k) == v for k, v in options.items())
    optimizers = make_optimizers(model, cfg, "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for step in range(12):
        set_learning_rates(optimizers, step, cfg)
        next_batch = functools.partial(training_batch, cfg, "cpu", step, 0)
        losses.append(train_step(model, optimizers, scaler, next_batch, 1, contextlib.nullcontext(), 1.0).item())
    assert sum(losses[-3:]) / 3 < losses[0] - 1.5, losses


# ----------------------------------------------------------------------------- generation past block_size

@pytest.mark.parametrize("prompt_len,new_tokens", [(1, 40), (5, 60), (16, 20), (23, 30), (50, 10)])
def test_with_rope_the_cache_slides_by_one_token_and_gives_the_uncached_greedy_tokens(prompt_len, new_tokens):
    # block_size 16: every case but the first crosses it; 50 is a prompt longer than the model's
    # 2 * 15 + 1 = 31-token receptive field
    model = small_model(**MODERN)
    idx = torch.randint(0, 97, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    prefills = []
    model.hidden_states = functools.partial(record_prefills, model.hidden_states, prefills)
    cached = model.generate(idx, new_tokens, temperature=0, kv_cache=True)
    assert len(prefills) == 1  # filled once, never refilled: the window slid by one token at every step
    plain = model.generate(idx, new_tokens, temperature=0, kv_cache=False)
    assert torch.equal(cached, plain)


def record_prefills(hidden_states, prefills, idx, cache=None, pos=None):
    if cache is not None and pos is None:
        prefills.append(idx.size(1))
    return hidden_states(idx, cache, pos)


def test_with_rope_cached_logits_past_block_size_equal_a_sliding_window_forward_pass():
    # each position attends to the block_size latest ones (itself included) at every layer: the
    # cache's slots, reused in turn, hold exactly those
    model = small_model(**MODERN)
    idx = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model.lm_head(model.hidden_states(idx))  # 40 > block_size: the sliding window
        cache = model.make_kv_cache(1, torch.device("cpu"))
        steps = [model.lm_head(model.hidden_states(idx[:, :10], cache))]
        steps += [model.decode_step(idx[:, t:t + 1], cache, torch.tensor([t]))[:, None] for t in range(10, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and up to block_size the window is the plain causal one
        torch.testing.assert_close(full[:, :16], model(idx[:, :16])[0], rtol=1e-5, atol=1e-5)


def test_learned_positions_still_refuse_a_sequence_longer_than_block_size():
    with pytest.raises(ValueError, match="longer than block_size=16"):
        small_model().hidden_states(torch.zeros((1, 17), dtype=torch.long))


# ----------------------------------------------------------------------------- checkpoints

def test_a_checkpoint_from_before_the_options_resumes_as_gpt2_and_another_option_is_refused(tiny_data, tmp_path):
    flags = [f"--data_dir={tiny_data}", "--block_size=32", "--n_layer=2", "--n_head=2", "--n_embd=32"]
    cfg = config.parse_args(flags)

    def new_run(seed):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**scratch_model_args(cfg, 50257)))
        return model, make_optimizers(model, cfg, "cpu")

    model, optimizers = new_run(seed=0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    next_batch = functools.partial(training_batch, cfg, "cpu", 0, 0)
    train_step(model, optimizers, scaler, next_batch, 1, contextlib.nullcontext(), grad_clip=1.0)  # moments to keep
    old_args = dict(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1, bias=True)
    saved = {"model": model.state_dict(), "optimizer": {"adamw": optimizers["adamw"].state_dict()},
             "scaler": scaler.state_dict(), "model_args": old_args, "config": vars(cfg), "step": 1,
             "best_val_loss": 9.0, "rng": [rng_state()]}
    checkpoint.save(saved, str(tmp_path / "ckpt.pt"))
    fresh, fresh_optimizers = new_run(seed=1)  # other weights, no moments: everything must come from the file
    step = resume(str(tmp_path / "ckpt.pt"), fresh, fresh_optimizers, "adamw", scaler,
                  scratch_model_args(cfg, 50257), 0, 1, lambda *a: None)[0]
    assert step == 1
    assert fresh.state_dict().keys() == saved["model"].keys()
    assert all(torch.equal(p, saved["model"][name]) for name, p in fresh.state_dict().items())
    assert_same_optimizer_states({"optimizer": {"adamw": fresh_optimizers["adamw"].state_dict()}}, saved)
    rope_cfg = config.parse_args([*flags, "--pos_emb=rope"])
    with pytest.raises(UserError, match="pos_emb=learned in the checkpoint but rope now"):
        resume(str(tmp_path / "ckpt.pt"), *new_run(seed=1), "adamw", scaler, scratch_model_args(rope_cfg, 50257),
               0, 1, lambda *a: None)


@pytest.mark.slow
def test_export_refuses_a_model_with_options_gpt2_does_not_have(tmp_path):
    out_dir = tmp_path / "out"
    os.makedirs(out_dir)
    model_args = {**SMALL, "vocab_size": 50257, "pos_emb": "rope", "qk_norm": True}
    torch.save(GPT(GPTConfig(**model_args)).state_dict(), out_dir / "best_model_params.pt")
    (out_dir / "config.json").write_text(json.dumps({"model_args": model_args}))
    result = run_script("export.py", "--out_dir", out_dir, "--to", tmp_path / "hf", cwd=ROOT)
    assert_clean_error(result, "not a GPT-2 model", "pos_emb='rope'", "qk_norm=True")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_the_modern_preset_trains_resumes_exactly_samples_and_evaluates(tiny_data, tmp_path):
    flags = [os.path.join(ROOT, "presets", "modern.py"), f"--data_dir={tiny_data}", *TINY_RUN, "--eval_interval=3",
             "--dropout=0.1", "--learning_rate=3e-3"]
    straight = run_script("train.py", *flags, f"--out_dir={tmp_path / 'straight'}", "--max_iters=6")
    first = run_script("train.py", *flags, f"--out_dir={tmp_path / 'split'}", "--max_iters=3")
    second = run_script("train.py", *flags, f"--out_dir={tmp_path / 'split'}", "--max_iters=6", "--init_from=resume")
    for result in (straight, first, second):
        assert result.returncode == 0, result.stderr
    a, b = (checkpoint.load_checkpoint(str(tmp_path / run / "ckpt.pt")) for run in ("straight", "split"))
    assert (a["model_args"]["pos_emb"], a["model_args"]["mlp"]) == ("rope", "relu2")
    assert "transformer.wpe.weight" not in a["model"]
    assert all(torch.equal(tensor, b["model"][name]) for name, tensor in a["model"].items())
    other = run_script("train.py", *flags, f"--out_dir={tmp_path / 'split'}", "--max_iters=9", "--init_from=resume",
                       "--qk_norm=false")
    assert_clean_error(other, "another architecture", "qk_norm=True in the checkpoint but False now")

    out_dir = tmp_path / "straight"
    greedy = ["--out_dir", out_dir, "--temperature", "0", "--max_new_tokens", "80", "--ignore_eot"]  # past 32 tokens
    cached, uncached = run_script("sample.py", *greedy), run_script("sample.py", *greedy, "--no_kv_cache")
    assert cached.returncode == 0 and uncached.returncode == 0, cached.stderr + uncached.stderr
    assert cached.stdout.startswith("Once upon a time") and cached.stdout == uncached.stdout
    evaluated = run_script("eval.py", "--out_dir", out_dir, "--data_dir", tiny_data)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "loss" in evaluated.stdout and "tokens evaluated" in evaluated.stdout
