"""config.py: defaults, command-line overrides, and refusing impossible settings."""
import os

import pytest

import config
from common import UserError


def test_flags_override_defaults_with_the_default_type():
    cfg = config.parse_args(["--batch_size=64", "--learning_rate", "3e-4", "--bias=false", "--out_dir=runs/a"])
    assert cfg.batch_size == 64 and isinstance(cfg.batch_size, int)
    assert cfg.learning_rate == 3e-4
    assert cfg.bias is False
    assert cfg.out_dir == "runs/a"
    assert cfg.n_layer == config.n_layer


def test_dashed_flag_names_work_as_underscored_ones():
    assert config.parse_args(["--max-iters=7", "--out-dir", "runs/b"]).max_iters == 7


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match="unknown config key 'batchsize'.*--batch_size"):
        config.parse_args(["--batchsize=8"])


def test_mistyped_value_is_refused():
    with pytest.raises(UserError, match="'abc' is not a valid int"):
        config.parse_args(["--batch_size=abc"])


@pytest.mark.parametrize("flags, message", [
    (["--n_embd=100", "--n_head=6"], "not divisible by n_head"),
    (["--block_size=0"], "block_size=0 must be at least 1"),
    (["--batch_size=0"], "batch_size=0 must be at least 1"),
    (["--min_lr=1e-2", "--learning_rate=1e-3"], "min_lr"),
    (["--dropout=1.5"], "dropout"),
    (["--dtype=float8"], "must be one of"),
    (["--init_from="], "--init_from is empty; use scratch, resume, or the weights to fine-tune from"),
    (["--warmup_iters=100", "--lr_decay_iters=50"], "lr_decay_iters"),
    (["--optimizer=sgd"], "--optimizer='sgd' must be one of: adamw, muon"),
    (["--muon_lr=0"], "--muon_lr=0.0 must be positive"),
    (["--muon_momentum=1"], "--muon_momentum=1.0 must be in"),
    (["--muon_momentum=-0.1"], "--muon_momentum=-0.1 must be in"),
    (["--muon_weight_decay=-1"], "--muon_weight_decay=-1.0 must not be negative"),
])
def test_impossible_settings_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        config.parse_args(flags)


def test_muon_knobs_are_typed_and_the_optimizer_name_is_case_insensitive():
    cfg = config.parse_args(["--optimizer=Muon", "--muon_lr=0.05", "--muon_momentum", "0.9", "--muon_weight_decay=0"])
    assert cfg.optimizer == "muon"
    assert (cfg.muon_lr, cfg.muon_momentum, cfg.muon_weight_decay) == (0.05, 0.9, 0.0)
    assert all(isinstance(v, float) for v in (cfg.muon_lr, cfg.muon_momentum, cfg.muon_weight_decay))
    assert config.parse_args([]).optimizer == "adamw"  # today's recipe stays the default
    with pytest.raises(UserError, match="'fast' is not a valid float"):
        config.parse_args(["--muon_lr=fast"])


def test_every_knob_has_a_comment_in_config_py():
    source = open(config.__file__).read().splitlines()
    for name in config.defaults():
        line = next(line for line in source if line.startswith(f"{name} = "))
        assert "#" in line, line


def test_docs_configuration_documents_every_knob():
    page = open(config.__file__.replace("config.py", os.path.join("docs", "configuration.md"))).read()
    missing = [name for name in config.defaults() if f"| `{name}` |" not in page]
    assert not missing


GiB = 2**30


@pytest.mark.parametrize("gpu_gib, world_size, expected", [
    (80, 1, (256, 4)),  # presets/gpu.py's micro-batch: the tokens cap, not the memory, decides
    (24, 1, (128, 8)),  # 256 x 128 would need ~19.5 GB of a 24 GB GPU's 12 allowed
    (8, 1, (32, 32)),  # config.py's own micro-batch is what fits
    (80, 2, (256, 4)),  # per process: 512 sequences a step, in 2 micro-batches each
])
def test_a_gpu_gets_the_largest_micro_batch_that_fits_with_the_same_tokens_per_step(gpu_gib, world_size, expected):
    cfg = config.parse_args([])
    batch, accumulation = config.gpu_micro_batch(cfg, 50257, world_size, gpu_gib * GiB)
    assert (batch, accumulation) == expected
    assert batch * accumulation == cfg.batch_size * cfg.gradient_accumulation_steps  # the same tokens per step


def test_a_micro_batch_divides_the_sequences_of_a_step():
    cfg = config.parse_args(["--batch_size=3", "--gradient_accumulation_steps=5", "--block_size=64"])  # 15 sequences
    assert config.gpu_micro_batch(cfg, 4096, 1, 80 * GiB) == (15, 1)
    assert config.gpu_micro_batch(cfg, 50257, 1, 1.5 * GiB) == (5, 3)  # memory allows 8: the largest divisor below
