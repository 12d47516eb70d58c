"""gpu_fast_paths.py: the chunked loss over a padded head gives model.py's loss and gradients (run on the CPU)."""
import pytest
import torch
from torch.nn import functional as F

import gpu_fast_paths
from conftest import assert_same_loss_and_gradients
from gpu_fast_paths import ChunkedLossGPT, chunked_cross_entropy
from model import GPT, GPTConfig

CONFIG = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)  # 97: padded to 128


def data(rows=300, width=16, vocab=97, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h, weight = torch.randn(rows, width, generator=generator), torch.randn(vocab, width, generator=generator)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::7] = -1  # not counted
    return h, weight, targets


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_chunked_loss_and_gradients_equal_the_plain_ones_in_float32(chunk_rows):
    h, weight, targets = data()
    h_ref, w_ref = h.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = F.cross_entropy(h_ref @ w_ref.t(), targets, ignore_index=-1)
    expected.backward()
    loss, grad_h, grad_weight = chunked_cross_entropy(h, weight, targets, torch.float32, chunk_rows=chunk_rows)
    # float32 throughout; the sums run in another order: rounding of ~1e-7 relative
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_h, h_ref.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_weight, w_ref.grad, rtol=1e-5, atol=1e-7)
    assert grad_weight.shape == weight.shape  # the padding rows stay inside


def test_the_padding_ids_get_no_probability():
    # a padding row of the head is zeros: an unmasked padding logit would be 0, and with all real
    # logits far below it, it would take nearly all the probability
    h, weight, targets = data(vocab=100)
    weight = weight - 50.0 * h.mean(0)  # every real logit strongly negative
    expected = F.cross_entropy(h @ weight.t(), targets, ignore_index=-1)
    loss = chunked_cross_entropy(h, weight, targets, torch.float32, with_grads=False)[0]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def models():
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**CONFIG))
    chunked = GPT(GPTConfig(**CONFIG))
    chunked.load_state_dict(plain.state_dict())
    assert gpu_fast_paths.enable(chunked, "cuda") and type(chunked) is ChunkedLossGPT
    return plain, chunked


def test_the_model_trains_with_the_same_loss_and_gradients_and_saves_the_same_weights():
    plain, chunked = models()
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    y[0, -3:] = -1
    assert_same_loss_and_gradients(plain, chunked, x, y, loss_atol=1e-6)
    assert {k: v.shape for k, v in chunked.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(chunked(x, y)[1], plain(x, y)[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked(x)[0], plain(x)[0])  # generating: the plain logits, over the vocabulary only


def test_under_bf16_autocast_the_loss_follows_the_plain_models():
    # both multiply in bf16 and take the softmax in float32; they round the products differently
    # (one matmul per chunk against one for all rows), which bf16's 8 bits of mantissa make visible
    plain, chunked = models()
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [model(x, torch.roll(x, -1, dims=1))[1] for model in (plain, chunked)]
    assert losses[1].dtype == torch.float32
    assert abs(losses[1].item() - losses[0].item()) < 0.02 * losses[0].item()


def test_off_a_gpu_the_model_is_left_as_it_is():
    model = GPT(GPTConfig(**CONFIG))
    assert not gpu_fast_paths.enable(model, "cpu") and type(model) is GPT
