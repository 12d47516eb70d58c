"""data.py: batches drawn from the token files, and bits per byte."""
import math

import numpy as np
import pytest
import torch

from data import batch_rng, bits_per_byte, get_batch


def test_targets_are_the_inputs_shifted_by_one(tiny_data):
    tokens = np.memmap(tiny_data / "train.bin", dtype=np.uint16, mode="r")
    x, y = get_batch(str(tiny_data), "train", 8, 32, batch_rng(0, 0, 0), "cpu")
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        start = next(i for i in range(len(tokens)) if tokens[i:i + 32].tolist() == row_x)
        assert tokens[start + 1:start + 33].tolist() == row_y


def test_batches_depend_only_on_step_and_micro_batch(tiny_data):
    def batch(step, micro):
        return get_batch(str(tiny_data), "train", 4, 32, batch_rng(7, step, micro), "cpu")[0]

    assert torch.equal(batch(3, 1), batch(3, 1))
    assert not torch.equal(batch(3, 1), batch(3, 2))
    assert not torch.equal(batch(3, 1), batch(4, 1))


def test_bits_per_byte_converts_nats_per_token_with_the_splits_bytes_per_token():
    split = {"tokens": 1000, "text_bytes": 4000}  # 4 bytes of text per token
    assert bits_per_byte(math.log(2), split) == pytest.approx(0.25)  # 1 bit per token = 1/4 bit per byte
    assert bits_per_byte(2.0, {"tokens": 10, "text_bytes": 0}) == pytest.approx(2.0 / math.log(2) * 10)  # no div by 0
