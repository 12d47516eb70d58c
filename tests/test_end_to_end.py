"""A user's whole session: prepare -> train -> sample, each script run as a program."""
import csv

import numpy as np
import pytest

from conftest import make_stories, run_script, write_txt


def unigram_entropy(path):
    """Loss (nats/token) of the best model that ignores context: the token frequencies themselves."""
    counts = np.bincount(np.fromfile(path, dtype=np.uint16))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.slow
def test_prepare_train_sample_writes_a_story(tmp_path):
    write_txt(tmp_path / "stories.txt", make_stories(400, seed=11))
    prepared = run_script("prepare.py", "--input", "stories.txt", "--val_fraction", "0.1", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr

    trained = run_script("train.py", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=16",
                         "--gradient_accumulation_steps=1", "--learning_rate=5e-3", "--min_lr=3e-4",
                         "--warmup_iters=5", "--max_iters=50", "--lr_decay_iters=50", "--eval_interval=50",
                         "--eval_iters=4", "--dropout=0", cwd=tmp_path)  # default data/ and out/ folders
    assert trained.returncode == 0, trained.stderr
    with open(tmp_path / "out/metrics.csv") as f:
        best_val_loss = min(float(row["val_loss"]) for row in csv.DictReader(f))
    baseline = unigram_entropy(tmp_path / "data/train.bin")
    assert best_val_loss < baseline - 1.0, (best_val_loss, baseline)

    sampled = run_script("sample.py", "--prompt", "Once upon a time", "--temperature", "0", "--max_new_tokens", "30",
                         cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    story = sampled.stdout.strip()
    assert story.startswith("Once upon a time")
    continuation = story[len("Once upon a time"):].split()
    vocabulary = set(" ".join(make_stories(400, seed=11)).replace(".", " ").replace(",", " ").split())
    assert len(continuation) >= 5
    assert sum(word.strip(".,!\"") in vocabulary for word in continuation) >= 0.8 * len(continuation)
