"""The fast paths give the same results as the plain ones: KV-cached generation, the chunked
LM-head + cross-entropy, nucleus sampling. Correctness only; bench.py measures the speed."""
import pytest
import torch
from torch.nn import functional as F

from model import GPT, GPTConfig, KVCache, LinearCrossEntropy, linear_cross_entropy, sample_next, window_start


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
        steps = [model.lm_head(model.hidden_states(idx[:, t:t + 1], cache)) for t in range(10, 32)]
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
    assert {row[0] for row in drawn} <= {1, 2} and {row[1] for row in drawn} <= {0, 3}


# ----------------------------------------------------------------------------- chunked loss

def plain_loss(h, weight, targets):
    return F.cross_entropy(h @ weight.t(), targets, ignore_index=-1)


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


def test_model_training_loss_and_gradients_equal_the_plain_path():
    # the whole model, tied embedding included: the head's gradient adds to the embedding's
    model = small_model(dropout=0.0).train()
    x = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    y[0, -5:] = -1
    _, loss = model(x, y)
    loss.backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = plain_loss(model.hidden_states(x).view(-1, 64), model.lm_head.weight, y.view(-1))
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_loss_without_gradients_equals_the_plain_path():
    model = small_model()
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    with torch.no_grad():
        _, loss = model(x, y)
        logits, _ = model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 97), y.view(-1)), rtol=1e-5, atol=1e-5)


def test_chunked_loss_is_exact_where_the_target_probability_underflows():
    # a loss of hundreds of nats: softmax gives the target probability 0, the exact form takes over
    torch.manual_seed(0)
    h, weight = 40 * torch.randn(20, 8), torch.randn(30, 8)
    targets = (h @ weight.t()).argmin(dim=1)
    expected = plain_loss(h, weight, targets)
    assert expected.item() > 200
    loss, _, _ = linear_cross_entropy(h, weight, targets, chunk_rows=8)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- prepare.py

def test_txt_stories_split_exactly_at_separator_lines_across_read_chunks(tmp_path):
    import random
    import re

    import prepare

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
    assert [s.strip() for s in prepare.txt_stories([str(tmp_path / "s.txt")])] == [s.strip() for s in reference]


def test_batch_encoding_equals_encode_ordinary_per_story():
    import prepare
    from tokenizer import EOT_TOKEN, load_tokenizer

    prepare._init_worker()
    enc = load_tokenizer()
    stories = ["Once upon a time.", "  ", "Émile saw a café 😊!\n\nThe end.", " x", "a\n<|endoftext|>"]
    for batch in (stories[:4], stories):  # the last story holds the EOT text: the per-story path
        ids, count, text_bytes = prepare.encode_stories(batch)
        kept = [s.strip() for s in batch if s.strip()]
        assert ids.dtype.name == "uint16" and (count, text_bytes) == (len(kept), sum(len(s.encode()) for s in kept))
        assert ids.tolist() == [t for s in kept for t in enc.encode_ordinary(s) + [EOT_TOKEN]]


# ----------------------------------------------------------------------------- dropout on CPU

def test_cpu_dropout_keeps_1_minus_p_and_scales_the_survivors():
    from model import dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert torch.equal(dropout(x, 0.1, training=False), x)


def test_cpu_training_attention_matches_sdpa_when_nothing_is_dropped():
    # in training with dropout on CPU, attention runs as explicit ops with the cheaper mask; with a
    # dropout probability so small that nothing is dropped it must equal SDPA's causal attention
    model = small_model(dropout=1e-12).train()
    model_sdpa = small_model(dropout=0.0).train()  # same seed: same weights; dropout 0 takes SDPA
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model.hidden_states(x), model_sdpa.hidden_states(x), rtol=1e-5, atol=1e-5)
