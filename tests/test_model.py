"""The GPT itself: causality, weight tying, size, learning, checkpoint loading."""
import json

import torch

from model import GPT, GPTConfig, load_model


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


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = GPT(small_config()).eval()
    idx = torch.randint(0, 100, (2, 16))
    expected, _ = model(idx)
    # the two files train.py writes: a full ckpt.pt, and plain weights beside config.json
    torch.save({"model": model.state_dict(), "model_args": vars(model.config)}, tmp_path / "ckpt.pt")
    torch.save(model.state_dict(), tmp_path / "best_model_params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model_args": vars(model.config)}))
    for name in ("ckpt.pt", "best_model_params.pt"):
        loaded = load_model(str(tmp_path / name)).eval()
        assert torch.equal(loaded(idx)[0], expected)


def test_compiled_model_checkpoint_loads_into_a_plain_model(tmp_path):
    model = GPT(small_config()).eval()
    compiled_state = torch.compile(model).state_dict()  # names carry the `_orig_mod.` prefix
    assert all(k.startswith("_orig_mod.") for k in compiled_state)
    torch.save({"model": compiled_state, "model_args": vars(model.config)}, tmp_path / "ckpt.pt")
    loaded = load_model(str(tmp_path / "ckpt.pt")).eval()
    idx = torch.randint(0, 100, (1, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    # and the other way: a plain state_dict loads into a compiled wrapper's module
    torch.compile(GPT(small_config()))._orig_mod.load_state_dict(model.state_dict())
