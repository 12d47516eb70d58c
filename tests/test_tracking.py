"""Experiment tracking with Weights & Biases, run offline (WANDB_MODE=offline): what train.py
logs, the same W&B run continued on resume, and a clear error without the wandb package."""
import csv
import glob
import json
import os
import subprocess
import sys

import pytest

import checkpoint
from conftest import PROCESS_TIMEOUT, ROOT, TINY_RUN, assert_clean_error, run_script_reporting_imports
from test_finetune import save_hf_gpt2


def train_offline(tiny_data, out_dir, *flags):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--data_dir={tiny_data}",
                           f"--out_dir={out_dir}", *TINY_RUN, "--wandb_log=true", "--wandb_project=tests",
                           "--wandb_run_name=tiny", *flags], capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT, env=env)


def wandb_records(path):
    """The records of a W&B run file (run-ID.wandb): a header, then records in 32 KiB blocks, each
    with a 7-byte header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last part)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    position, block, pending = 7, 1 << 15, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room left for a header: the block is padded
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def logged_run(out_dir, run_id=None):
    """(run id, name, config, {step: {key: value}}) of the offline W&B runs in out_dir/wandb."""
    files = sorted(glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", "run-*.wandb")))
    assert files, os.listdir(out_dir)
    ids, name, config, history = set(), None, {}, {}
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                name = record.run.display_name
                config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "history":
                values = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                          for item in record.history.item}
                history.setdefault(values.get("_step", record.history.step.num), {}).update(values)
    assert len(ids) == 1, ids  # one W&B run, however many times it was resumed
    return ids.pop(), name, config, history


@pytest.mark.slow
def test_a_run_logs_its_config_log_lines_and_evaluations_and_resumes_the_same_w_and_b_run(tiny_data, tmp_path):
    first = train_offline(tiny_data, tmp_path, "--max_iters=4", "--eval_interval=2")
    assert first.returncode == 0, first.stderr
    second = train_offline(tiny_data, tmp_path, "--max_iters=6", "--eval_interval=2", "--init_from=resume")
    assert second.returncode == 0, second.stderr
    run_id, name, config, history = logged_run(tmp_path)
    assert name == "tiny" and config["batch_size"] == 4 and config["n_layer"] == 2

    losses = {int(line.split("/")[0].split()[1]): float(line.split("| loss ")[1].split()[0])
              for line in (first.stdout + second.stdout).splitlines() if line.startswith("step ")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    for step, loss in losses.items():
        assert history[step]["loss"] == pytest.approx(loss, abs=1e-4)
        assert history[step]["tokens_per_s"] > 0 and history[step]["lr"] > 0
    with open(tmp_path / "metrics.csv") as f:
        for row in csv.DictReader(f):
            logged = history[int(row["step"])]
            for key in ("val_loss", "val_perplexity", "val_bits_per_byte", "train_loss"):
                assert logged[key] == pytest.approx(float(row[key])), key
    import torch

    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["wandb_run_id"] == run_id


@pytest.mark.slow
def test_a_fine_tune_logs_where_its_weights_came_from_and_its_starting_loss(tiny_data, tmp_path):
    save_hf_gpt2(tmp_path / "hf")
    result = train_offline(tiny_data, tmp_path / "out", f"--init_from={tmp_path / 'hf'}", "--max_iters=2",
                           "--eval_interval=2")
    assert result.returncode == 0, result.stderr
    _, _, config, history = logged_run(tmp_path / "out")
    assert config["init_from"] == str(tmp_path / "hf")
    assert config["init"]["sha256"] == checkpoint.sha256(tmp_path / "hf" / "model.safetensors")
    with open(tmp_path / "out" / "metrics.csv") as f:
        starting = next(csv.DictReader(f))
    assert starting["step"] == "0" and history[0]["val_loss"] == pytest.approx(float(starting["val_loss"]))


@pytest.mark.slow
def test_a_run_without_wandb_log_does_not_import_wandb(tiny_data, tmp_path):
    result, imported = run_script_reporting_imports("train.py", f"--data_dir={tiny_data}", f"--out_dir={tmp_path}",
                                                    *TINY_RUN, "--max_iters=1")
    assert result.returncode == 0, result.stderr
    assert "torch" in imported and "wandb" not in imported


@pytest.mark.slow
def test_wandb_log_without_the_wandb_package_says_how_to_install_it(tiny_data, tmp_path):
    hide_wandb = ("import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", hide_wandb, os.path.join(ROOT, "train.py"), f"--data_dir={tiny_data}",
                             f"--out_dir={tmp_path}", *TINY_RUN, "--wandb_log=true", "--max_iters=1"],
                            capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert_clean_error(result, "needs the wandb package", "pip install wandb")
    assert not (tmp_path / "ckpt.pt").exists()  # refused before any work
