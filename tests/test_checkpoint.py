"""checkpoint.py: loading what train.py saves, and saying why a file cannot be loaded."""
import json
import re

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from checkpoint import load_checkpoint, load_model
from common import UserError, first_line
from model import GPT, GPTConfig


def small_config(**overrides):
    return GPTConfig(**{**dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
                        **overrides})


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


@pytest.fixture
def process_group_of_one():
    """A gloo process group of this process alone, in memory: DDP can wrap a model here."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["ddp", "ddp_over_compile"])
def test_a_ddp_model_checkpoint_loads_into_a_plain_model(tmp_path, process_group_of_one, compiled):
    # train.py wraps the compiled model in DDP: the names then carry both prefixes
    model = GPT(small_config()).eval()
    wrapped = DistributedDataParallel(torch.compile(model) if compiled else model)
    ddp_state = wrapped.state_dict()
    assert all(k.startswith("module._orig_mod." if compiled else "module.") for k in ddp_state)
    torch.save({"model": ddp_state, "model_args": vars(model.config)}, tmp_path / "ckpt.pt")
    loaded = load_model(str(tmp_path / "ckpt.pt")).eval()
    idx = torch.randint(0, 100, (1, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def saved_checkpoint(tmp_path):
    torch.save({"model": GPT(small_config()).state_dict(), "model_args": vars(small_config())}, tmp_path / "ckpt.pt")
    return tmp_path / "ckpt.pt"


@pytest.mark.parametrize("damage, message, judged_by", [
    (lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]), "is corrupt or truncated",
     "torch.load"),
    (lambda path: path.write_bytes(b"not a checkpoint, just some text"),
     "is not a checkpoint (not a file that torch.save wrote)", "its first bytes"),
    (lambda path: path.write_bytes(b""), "is not a checkpoint (an empty file)", "its first bytes"),
])
def test_a_damaged_or_foreign_file_is_named_for_what_it_is(tmp_path, damage, message, judged_by):
    path = saved_checkpoint(tmp_path)
    damage(path)
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        load_checkpoint(str(path))
    error = raised.value
    if judged_by == "torch.load":  # the loader's own exception is kept as the cause, and named in the line
        with pytest.raises(Exception) as loader:
            torch.load(path, weights_only=True)
        assert type(error.__cause__) is type(loader.value) and str(error.__cause__) == str(loader.value)
        assert f"({type(loader.value).__name__}: {first_line(loader.value)})" in str(error)
    else:  # no exception lies behind it
        assert error.__cause__ is None and error.__context__ is None, repr(error.__context__)


def test_a_folder_is_not_called_a_corrupt_checkpoint(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a checkpoint file.*best_model_params.pt"):
        load_checkpoint(str(tmp_path))


def test_a_missing_file_says_to_train_first(tmp_path):
    with pytest.raises(UserError, match="does not exist; train a model first"):
        load_checkpoint(str(tmp_path / "nothing.pt"))
