"""cpu_fast_paths.py's spec: each fast path gives what the plain model.py gives (logits, loss,
gradients, greedy tokens), and enable() switches them on only where they are faster.
Correctness only; bench.py measures the speed."""
import pytest
import torch
from torch.nn import functional as F

import cpu_fast_paths
from cpu_fast_paths import LinearCrossEntropy, PackedLinear, cheap_dropout, few_rows_linear, linear_cross_entropy
from common import native_bf16
from conftest import MODERN, assert_same_loss_and_gradients
from model import GPT, GPTConfig

CONFIG = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)


def plain_and_fast(seed=0, dtype=torch.float32, **overrides):
    """Two models with the same weights in dtype: model.py's plain GPT, and one with the fast paths on."""
    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        models.append(GPT(GPTConfig(**{**CONFIG, **overrides})).eval().to(dtype))
    assert cpu_fast_paths.enable(models[1], "cpu", dtype)
    return models


needs_bf16 = pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no bf16 instructions")


def plain_loss(h, weight, targets):
    return F.cross_entropy(h @ weight.t(), targets, ignore_index=-1)


# ----------------------------------------------------------------------------- the switch

def test_enable_swaps_the_pieces_and_keeps_the_parameters():
    plain, fast = plain_and_fast()
    assert type(fast) is cpu_fast_paths.FusedLossGPT and type(plain) is GPT
    assert type(fast.transformer.h[0].attn) is cpu_fast_paths.ExplicitAttention
    assert type(fast.transformer.drop) is cpu_fast_paths.CheapDropout
    assert type(fast.lm_head) is torch.nn.Linear  # 97 x 64: too small to gain (the default model's are swapped)
    assert fast.lm_head.weight is fast.transformer.wte.weight  # still tied
    plain_state, fast_state = plain.state_dict(), fast.state_dict()
    assert plain_state.keys() == fast_state.keys()
    assert all(torch.equal(plain_state[k], fast_state[k]) for k in plain_state)


@pytest.mark.parametrize("weights, device, dtype, compiled", [
    (torch.float32, "cuda", torch.float32, False), (torch.float32, "mps", torch.float32, False),
    (torch.float32, "cpu", torch.bfloat16, False),  # bf16 autocast over float32 weights (train.py)
    (torch.float32, "cpu", torch.float16, False), (torch.float32, "cpu", torch.float32, True),
    (torch.bfloat16, "cuda", torch.bfloat16, False), (torch.bfloat16, "cpu", torch.bfloat16, True),
    (torch.float16, "cpu", torch.float16, False),
])
def test_enable_leaves_the_plain_model_where_it_is_the_fast_one(weights, device, dtype, compiled):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG)).to(weights)
    assert cpu_fast_paths.enable(model, device, dtype, compiled) is False
    assert type(model) is GPT and all(type(m).__module__ != "cpu_fast_paths" for m in model.modules())


# ----------------------------------------------------------------------------- the fused LM-head loss

@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 300, 1000])
def test_chunked_loss_and_gradients_equal_the_plain_cross_entropy(chunk_rows):
    torch.manual_seed(0)
    h, weight = torch.randn(300, 16), torch.randn(97, 16)
    targets = torch.randint(0, 97, (300,))
    targets[::7] = -1  # ignored positions count neither in the loss nor in the mean
    h_ref, w_ref = h.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = plain_loss(h_ref, w_ref, targets)
    expected.backward()
    loss, grad_h, grad_weight = linear_cross_entropy(h, weight, targets, chunk_rows=chunk_rows)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_h, h_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_weight, w_ref.grad, rtol=1e-5, atol=1e-6)


def test_the_autograd_op_scales_by_the_incoming_gradient_and_survives_retain_graph():
    torch.manual_seed(0)
    h, weight = torch.randn(50, 8, requires_grad=True), torch.randn(40, 8, requires_grad=True)
    targets = torch.randint(0, 40, (50,))
    (0.25 * plain_loss(h, weight, targets)).backward()
    expected = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    loss = LinearCrossEntropy.apply(h, weight, targets)
    (0.125 * loss).backward(retain_graph=True)
    (0.125 * loss).backward()  # the saved gradients were not scaled in place by the first call
    torch.testing.assert_close(h.grad, expected[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, expected[1], rtol=1e-5, atol=1e-7)


def test_chunked_loss_is_exact_where_the_target_probability_underflows():
    # a loss of hundreds of nats: softmax gives the target probability 0, the exact form takes over
    torch.manual_seed(0)
    h, weight = 40 * torch.randn(20, 8), torch.randn(30, 8)
    targets = (h @ weight.t()).argmin(dim=1)
    expected = plain_loss(h, weight, targets)
    assert expected.item() > 200
    loss, _, _ = linear_cross_entropy(h, weight, targets, chunk_rows=8)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_evaluation_loss_without_gradients_equals_the_plain_model():
    plain, fast = plain_and_fast()
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, y)[1], plain(x, y)[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x)[0], plain(x)[0], rtol=1e-5, atol=1e-5)  # logits, without targets


# ----------------------------------------------------------------------------- dropout and attention

def test_cheap_dropout_keeps_1_minus_p_and_scales_the_survivors():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = cheap_dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert torch.equal(cheap_dropout(x, 0.1, training=False), x)


def test_training_attention_matches_sdpa_when_nothing_is_dropped():
    # in training with dropout, attention runs as explicit ops with the cheap mask; with a dropout
    # probability so small that nothing is dropped it must equal the plain model's SDPA
    plain, fast = (m.train() for m in plain_and_fast(dropout=1e-12))
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fast.hidden_states(x), plain.hidden_states(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- few-row Linear

@pytest.mark.parametrize("rows", [1, 2, 8])
@pytest.mark.parametrize("out_features", [4096, 4099])  # 4099: rows left over after the 8 blocks
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_equals_f_linear(rows, out_features, bias):
    torch.manual_seed(0)
    x, weight = torch.randn(rows, 64), torch.randn(out_features, 64)
    b = torch.randn(out_features) if bias else None
    torch.testing.assert_close(few_rows_linear(x, weight, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(few_rows_linear(x[None], weight, b), F.linear(x[None], weight, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_tokens_equal_the_plain_model(kv_cache):
    # the default model's width, so that the few-row Linear is used for every layer it applies to
    plain, fast = plain_and_fast(vocab_size=8192, n_embd=384, n_head=6, block_size=32)
    assert type(fast.transformer.h[0].mlp.c_fc) is cpu_fast_paths.FewRowsLinear
    assert type(fast.lm_head) is cpu_fast_paths.FewRowsLinear
    idx = torch.randint(0, 8192, (2, 5), generator=torch.Generator().manual_seed(5))
    expected = plain.generate(idx, 40, temperature=0, kv_cache=kv_cache)  # crosses block_size: the window jumps
    assert torch.equal(fast.generate(idx, 40, temperature=0, kv_cache=kv_cache), expected)


# ----------------------------------------------------------------------------- bf16 weights

@needs_bf16
def test_enable_with_bf16_weights_swaps_the_pieces_and_keeps_the_parameters():
    plain, fast = plain_and_fast(dtype=torch.bfloat16)
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is PackedLinear for m in linears)
    assert type(fast) is cpu_fast_paths.Float32CacheGPT
    assert type(fast.transformer.h[0].attn) is cpu_fast_paths.Float32Attention
    assert type(fast.transformer.drop) is torch.nn.Dropout  # the float32 paths stay off
    assert fast.lm_head.weight is fast.transformer.wte.weight
    plain_state, fast_state = plain.state_dict(), fast.state_dict()
    assert plain_state.keys() == fast_state.keys()
    assert all(torch.equal(plain_state[k], fast_state[k]) for k in plain_state)


@needs_bf16
@pytest.mark.parametrize("rows", [1, 8, 128])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear_in_bf16(rows, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 1536, bias=bias).to(torch.bfloat16)
    x = torch.randn(2, rows, 384, dtype=torch.bfloat16)
    expected = F.linear(x, linear.weight, linear.bias)
    linear.__class__ = PackedLinear
    with torch.no_grad():
        torch.testing.assert_close(linear(x), expected, rtol=0, atol=0)  # the same oneDNN arithmetic
        torch.testing.assert_close(linear(x[:, -1]), expected[:, -1], rtol=0, atol=0)  # a strided view


@needs_bf16
def test_packed_linear_repacks_when_the_weight_changes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    linear.__class__ = PackedLinear
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        linear(x)
        linear.load_state_dict({"weight": torch.randn(32, 64), "bias": torch.randn(32)})
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias), rtol=0, atol=0)


@needs_bf16
def test_packed_linear_with_gradients_is_the_plain_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    linear.__class__ = PackedLinear
    linear(torch.randn(3, 64, dtype=torch.bfloat16)).sum().backward()
    assert linear.weight.grad is not None and "_packed" not in linear.__dict__


def test_float32_attention_is_sdpa_in_float32_over_the_visible_slots_only():
    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 6, n, 64, dtype=torch.bfloat16) for n in (1, 100, 100))
    k[:, :, 60:] = float("nan")  # slots past the visible ones are never read
    attention = cpu_fast_paths.Float32Attention(GPTConfig(**{**CONFIG, "n_embd": 384, "n_head": 6})).eval()
    visible = (torch.arange(100) < 60)[None, :]  # one new token that sees the first 60 of 100 cache slots
    out = attention.attend(q, k, v, visible)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k[:, :, :60].float(), v[:, :, :60].float())
    torch.testing.assert_close(out, expected.to(torch.bfloat16), rtol=0, atol=0)
    full_cache = F.scaled_dot_product_attention(q.float(), k.nan_to_num().float(), v.float(), visible)
    torch.testing.assert_close(attention.attend(q.float(), k.nan_to_num().float(), v.float(), visible), full_cache,
                               rtol=1e-6, atol=1e-6)  # the same as attending to all slots with the mask


@needs_bf16
def test_with_bf16_weights_the_kv_cache_is_float32_and_logits_match_the_plain_bf16_model():
    # every position of a cached generation, against the plain model in float32 with the same
    # (bf16-rounded) weights: the fast paths stay as close to it as the plain model in bf16 does
    widths = dict(vocab_size=50257, n_embd=384, n_head=6)
    plain, fast = plain_and_fast(dtype=torch.bfloat16, **widths)
    plain_fp32 = plain_and_fast(**widths)[0]
    with torch.no_grad():
        for p in plain_fp32.parameters():  # the same (bf16-rounded) weights, in float32
            p.copy_(p.to(torch.bfloat16))
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(6))
    cache = fast.make_kv_cache(2, torch.device("cpu"))
    assert cache.k.dtype == torch.float32
    with torch.no_grad():
        fast_logits = torch.cat([fast.lm_head(fast.hidden_states(idx[:, :10], cache))] +
                                [fast.lm_head(fast.hidden_states(idx[:, t:t + 1], cache, torch.tensor([t]))) for t in range(10, 32)], dim=1)
        plain_logits, reference = plain(idx)[0].float(), plain_fp32(idx)[0]
    fast_error = (fast_logits.float() - reference).abs().max()
    plain_error = (plain_logits - reference).abs().max()
    assert fast_error <= plain_error * 1.5, (fast_error, plain_error)


# ----------------------------------------------------------------------------- the modern block

def perturbed(models):
    """The same random change to every weight of each model (zero-initialized projections would
    make the blocks the identity)."""
    for model in models:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return models


@pytest.mark.parametrize("options", [{}, MODERN], ids=["gpt2", "modern"])
def test_training_loss_and_gradients_equal_the_plain_model(options):
    # the whole model, tied embedding included: the head's gradient adds to the embedding's
    plain, fast = (m.train() for m in perturbed(plain_and_fast(**options)))
    x = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    y[0, -5:] = -1
    assert_same_loss_and_gradients(plain, fast, x, y, loss_atol=1e-5)


def test_modern_block_training_attention_with_dropout_matches_sdpa_when_nothing_is_dropped():
    plain, fast = (m.train() for m in perturbed(plain_and_fast(dropout=1e-12, **MODERN)))
    assert type(fast.transformer.h[0].attn) is cpu_fast_paths.ExplicitAttention
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fast.hidden_states(x), plain.hidden_states(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_modern_block_greedy_tokens_past_block_size_equal_the_plain_model(kv_cache):
    plain, fast = perturbed(plain_and_fast(vocab_size=8192, n_embd=384, n_head=6, block_size=32, **MODERN))
    assert type(fast.lm_head) is cpu_fast_paths.FewRowsLinear
    idx = torch.randint(0, 8192, (2, 5), generator=torch.Generator().manual_seed(5))
    expected = plain.generate(idx, 40, temperature=0, kv_cache=kv_cache)  # past block_size: the window slides
    assert torch.equal(fast.generate(idx, 40, temperature=0, kv_cache=kv_cache), expected)


def test_float32_attention_reads_every_key_of_a_sliding_window_mask():
    # without a cache past block_size (RoPE), the last query's visible keys end at the last slot
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    behind = torch.arange(40)[:, None] - torch.arange(40)[None, :]
    band = (behind >= 0) & (behind < 32)
    attention = cpu_fast_paths.Float32Attention(GPTConfig(**{**CONFIG, "n_embd": 32})).eval()
    expected = F.scaled_dot_product_attention(q, k, v, band)
    torch.testing.assert_close(attention.attend(q, k, v, band), expected, rtol=1e-6, atol=1e-6)
