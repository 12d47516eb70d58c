"""model.py: causality, weight tying, size, learning, and generation (KV cache, window, sampling); it
imports only torch."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import PROCESS_TIMEOUT, ROOT
from model import GPT, GPTConfig, KVCache, sample_next, window_start


def small_config(**overrides):
    return GPTConfig(**{**dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
                        **overrides})


def test_changing_a_token_never_changes_logits_before_it():
    torch.manual_seed(0)
    model = GPT(small_config()).eval()
    idx = torch.randint(0, 100, (2, 16))
    logits, _ = model(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 100
        new_logits, _ = model(changed)
        assert torch.equal(new_logits[:, :t], logits[:, :t])
        assert not torch.allclose(new_logits[:, t], logits[:, t])


# In a fresh interpreter: torch first, with whatever it brings along, then model.py, recording the
# packages model.py's own lines import (torch brings numpy, which a line of model.py could import
# unnoticed among sys.modules).
IMPORT_MODEL = """
import builtins, json, sys
import torch
before, asked, real_import = set(sys.modules), set(), builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if (globals or {}).get("__name__") == "model":
        asked.add(name.split(".")[0])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = recording_import
import model
print(json.dumps({"asked": sorted(asked), "new": sorted({m.split(".")[0] for m in set(sys.modules) - before})}))
"""


@pytest.mark.slow
def test_model_py_imports_only_torch():
    result = subprocess.run([sys.executable, "-c", IMPORT_MODEL], cwd=ROOT, capture_output=True, text=True,
                            timeout=PROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    imports = json.loads(result.stdout)
    packages = lambda names: {name for name in names if name not in sys.stdlib_module_names}  # noqa: E731
    assert packages(imports["asked"]) == {"torch"}
    assert packages(imports["new"]) <= {"model", "torch"}


def test_lm_head_and_token_embedding_share_one_tensor():
    model = GPT(small_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert sum(1 for name, _ in model.named_parameters() if "wte" in name or "lm_head" in name) == 1


def test_default_config_has_30_0M_parameters():
    model = GPT(GPTConfig())
    # 50257*384 (tied) + 128*384 + 6 * (12*384^2 + 13*384) + 2*384
    assert model.num_params() == 29_995_392
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd, model.config.block_size,
            model.config.vocab_size, model.config.dropout) == (6, 6, 384, 128, 50257, 0.1)


def test_residual_projections_start_with_smaller_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, n_layer=8))
    c_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    c_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(c_fc - 0.02) < 0.002
    assert abs(c_proj - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)


def test_loss_decreases_on_a_tiny_model():
    torch.manual_seed(0)
    model = GPT(small_config())
    optimizer = model.configure_optimizer(0.1, 3e-3, (0.9, 0.95), "cpu")
    x = torch.randint(0, 100, (8, 16))
    y = torch.roll(x, -1, dims=1)
    _, first = model(x, y)
    for _ in range(30):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item() - 1.0


def test_weight_decay_only_on_matrices():
    model = GPT(small_config())
    decayed, plain = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("prompt_len,new_tokens", [(1, 20), (5, 100), (32, 40), (50, 45)])
def test_greedy_tokens_are_identical_with_and_without_the_kv_cache(prompt_len, new_tokens):
    # prompts shorter than, equal to and (50) longer than block_size=32; 100 new tokens from a
    # short prompt cross the block several times, so the window jumps and the cache is refilled
    model = small_model()
    idx = torch.randint(0, 97, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    cached = model.generate(idx, new_tokens, temperature=0, kv_cache=True)
    plain = model.generate(idx, new_tokens, temperature=0, kv_cache=False)
    assert cached.shape == (2, prompt_len + new_tokens)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, plain)


def test_cached_logits_match_a_full_forward_pass_at_every_position():
    model = small_model()
    idx = torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(1))
    full, _ = model(idx)
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    with torch.no_grad():
        prefill = model.lm_head(model.hidden_states(idx[:, :10], cache))
        steps = [model.decode_step(idx[:, t:t + 1], cache, torch.tensor([t]))[:, None] for t in range(10, 32)]
    torch.testing.assert_close(torch.cat([prefill] + steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_the_window_past_block_size_jumps_by_half_a_block_and_never_overflows():
    block = 32
    assert [window_start(n, block) for n in (1, 32, 33, 48, 49, 64, 65, 81)] == [0, 0, 16, 16, 32, 32, 48, 64]
    for n in range(1, 300):
        start = window_start(n, block)
        assert 0 <= n - start <= block and start % (block // 2) == 0


def test_sampling_with_the_cache_follows_the_same_distribution_stream():
    # the same seed gives the same tokens: the cached logits equal the uncached ones closely
    # enough that top-k sampling draws identically (a smoke test of the sampling path)
    model = small_model()
    idx = torch.zeros((1, 3), dtype=torch.long)
    runs = []
    for kv_cache in (True, False):
        torch.manual_seed(7)
        runs.append(model.generate(idx, 40, temperature=0.8, top_k=20, kv_cache=kv_cache))
    assert torch.equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- sampling

def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    torch.manual_seed(0)
    for top_p, allowed in ((0.5, {0}), (0.6, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        drawn = {sample_next(logits, temperature=1.0, top_p=top_p).item() for _ in range(300)}
        assert drawn == allowed, (top_p, drawn)


def test_temperature_zero_is_argmax_and_top_k_limits_the_choice():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_next(logits, temperature=0).flatten().tolist() == [1, 0]
    torch.manual_seed(0)
    drawn = {tuple(sample_next(logits, temperature=1.0, top_k=2).flatten().tolist()) for _ in range(200)}
    # both of the two likeliest, and only they: the second of row 0 has probability 1 / (1 + e) = 0.27,
    # so 200 draws all miss it with probability 0.73^200 < 1e-27
    assert {row[0] for row in drawn} == {1, 2} and {row[1] for row in drawn} == {0, 3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_takes_the_first_of_equally_likely_tokens_in_any_dtype(dtype):
    logits = torch.zeros(3, 1000, dtype=dtype)
    logits[0, [5, 700]] = 1.0
    logits[1, [999, 3]] = 2.0
    assert sample_next(logits, temperature=0).flatten().tolist() == [5, 3, 0]


def test_sampling_takes_bf16_logits_and_draws_in_float32():
    logits = torch.tensor([[0.0, 8.0, 8.0, -4.0]], dtype=torch.bfloat16)
    torch.manual_seed(0)
    drawn = {sample_next(logits, temperature=0.5, top_k=3).item() for _ in range(100)}
    assert drawn == {1, 2}
