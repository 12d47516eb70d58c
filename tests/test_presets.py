"""presets/*.py: each parses, later flags win, each says how to make its data, and the laptop one really trains."""
import json
import os
import random
import re
import shlex

import pytest

import config
from conftest import MODERN, ROOT, run_script, write_txt

PRESETS = os.path.join(ROOT, "presets")


@pytest.mark.parametrize("name", ["seed.py", "gpu.py", "gpu_muon.py", "laptop.py", "modern.py", "finetune.py"])
def test_each_preset_parses_and_sets_only_real_knobs(name):
    cfg = config.parse_args([os.path.join(PRESETS, name)])
    assert vars(cfg) != config.defaults()
    assert not os.path.exists(os.path.join(PRESETS, "__init__.py"))  # a folder of files, not a package


def tokens_per_step(cfg):
    return cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps


def test_seed_and_gpu_presets_train_the_seed_model_on_the_seed_batch():
    seed = config.parse_args([os.path.join(PRESETS, "seed.py")])
    gpu = config.parse_args([os.path.join(PRESETS, "gpu.py")])
    for cfg in (seed, gpu):
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout) == (6, 6, 384, 128, 0.1)
        assert tokens_per_step(cfg) == 32 * 128 * 32
    assert seed.max_iters * seed.gradient_accumulation_steps == 20000  # the seed's 20000 micro-batches
    assert (gpu.batch_size, gpu.dtype, gpu.compile) == (256, "bfloat16", "true")


def test_finetune_preset_leaves_the_architecture_to_the_source_and_keeps_its_rate_after_warmup():
    given = set()
    cfg = config.parse_args([os.path.join(PRESETS, "finetune.py"), "--init_from=out"], given)
    assert not given & {"n_layer", "n_head", "n_embd", "block_size", "bias"}  # a fine-tune's come from its weights
    assert cfg.min_lr == cfg.learning_rate and cfg.warmup_iters < cfg.max_iters
    assert cfg.eval_interval <= cfg.max_iters // 5  # often enough that the best point is kept


def test_gpu_muon_preset_is_the_gpu_recipe_with_muon():
    gpu = vars(config.parse_args([os.path.join(PRESETS, "gpu.py")]))
    muon = vars(config.parse_args([os.path.join(PRESETS, "gpu_muon.py")]))
    assert {name for name in gpu if gpu[name] != muon[name]} == {"optimizer"}  # Muon's knobs at their defaults
    assert (muon["optimizer"], muon["muon_lr"], muon["muon_momentum"]) == ("muon", 0.02, 0.95)


def test_modern_preset_sets_the_model_options_only_and_combines_with_a_recipe():
    modern = vars(config.parse_args([os.path.join(PRESETS, "modern.py")]))
    defaults = config.defaults()
    assert {name: modern[name] for name in defaults if modern[name] != defaults[name]} == MODERN
    both = config.parse_args([os.path.join(PRESETS, "gpu_muon.py"), os.path.join(PRESETS, "modern.py")])
    assert (both.optimizer, both.batch_size, both.pos_emb) == ("muon", 256, "rope")


def test_later_flags_win_in_the_order_given():
    gpu = os.path.join(PRESETS, "gpu.py")
    assert config.parse_args([gpu, "--batch_size=64", "--max_iters=7"]).batch_size == 64
    assert config.parse_args(["--batch_size=64", gpu]).batch_size == 256  # the preset came later
    laptop = config.parse_args([gpu, os.path.join(PRESETS, "laptop.py")])
    assert (laptop.batch_size, laptop.optimizer, laptop.out_dir) == (16, "muon", "out-laptop")


def prepare_line(name):
    """The preset's data step: the words of its one `# prepare: python prepare.py ...` line."""
    with open(os.path.join(PRESETS, name)) as f:
        lines = [line[len("# prepare: "):].strip() for line in f if line.startswith("# prepare:")]
    assert len(lines) == 1, name
    return shlex.split(lines[0])


@pytest.mark.parametrize("name", ["gpu.py", "laptop.py"])  # the recipes run.sh picks
def test_a_recipe_says_on_one_line_how_to_prepare_its_data_and_reads_it_from_there(name):
    command = prepare_line(name)
    assert command[:2] == ["python", "prepare.py"]
    assert all(re.fullmatch(r"--[a-z_]+=[^/\s]+", flag) for flag in command[2:]), command  # flags, no paths
    out_dir = dict(flag[2:].split("=", 1) for flag in command[2:]).get("out_dir", "data")
    assert config.parse_args([os.path.join(PRESETS, name)]).data_dir == out_dir


def rich_stories(n, seed=0):
    """Stories of made-up words: enough different pairs to learn the 4,096 tokens the laptop preset asks for."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(6000)})
    return [" ".join(rng.choices(words, k=120)).capitalize() + "." for _ in range(n)]


@pytest.mark.slow
def test_the_laptop_presets_data_step_and_training_run(tmp_path):
    write_txt(tmp_path / "stories.txt", rich_stories(600))
    command = prepare_line("laptop.py")
    prepared = run_script(*command[1:], "--input", tmp_path / "stories.txt", f"--out_dir={tmp_path / 'data'}")
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads((tmp_path / "data/meta.json").read_text())["vocab_size"] == 4096
    trained = run_script("train.py", "presets/laptop.py", f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}",
                         "--max_iters=2", "--eval_iters=1", cwd=ROOT)
    assert trained.returncode == 0, trained.stderr
    assert "done: 2 steps" in trained.stdout and "time budget: 30 minutes" in trained.stdout
    assert (tmp_path / "out/best_model_params.pt").is_file() and (tmp_path / "out/tokenizer.json").is_file()
