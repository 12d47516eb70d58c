"""common.py: crash-safe writes that say why they failed, flags in either spelling, TRACEBACK=1."""
import errno
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import common
from common import ArgumentParser, UserError, WriteError, atomic_write
from conftest import ROOT, run_in_process


def no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def failing_writer(f):
    f.write(b"half of it")
    no_space()


def test_a_failed_write_names_the_file_and_the_reason_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the earlier checkpoint")
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        atomic_write(str(path), failing_writer)
    assert path.read_bytes() == b"the earlier checkpoint"
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no partial temporary file left


def test_torch_save_failing_inside_its_zip_writer_still_reports_the_os_reason(tmp_path):
    class FullDisk:  # a file whose writes fail after the first kilobyte
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1024:
                no_space()
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    path = tmp_path / "best_model_params.pt"
    with pytest.raises(WriteError, match="No space left on device"):  # torch raises a RuntimeError around it
        atomic_write(str(path), lambda f: torch.save({"w": torch.zeros(10_000)}, FullDisk(f)))
    assert os.listdir(tmp_path) == []


METRICS_ROW = {"step": 0, "tokens": 0, "train_loss": 1.0, "val_loss": 1.0, "val_perplexity": 2.7,
               "val_bits_per_byte": 0.5, "lr": 1e-3, "seconds": 1.0}


def test_metrics_that_cannot_be_written_raise_a_write_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match="metrics.csv: No space left on device"):
        checkpoint.write_metrics(str(tmp_path), [METRICS_ROW])
    assert os.listdir(tmp_path) == []


def test_a_plot_that_cannot_be_written_raises_a_write_error(tmp_path):
    # metrics.csv is written first, then loss.png, whose place a folder takes: its rename fails
    (tmp_path / "loss.png").mkdir()
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'loss.png'}: Is a directory"):
        checkpoint.write_metrics(str(tmp_path), [METRICS_ROW])
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "metrics.csv"]  # no partial temporary file left


def test_dashed_flags_are_read_as_underscored_ones_but_values_are_left_alone():
    parser = ArgumentParser()
    parser.add_argument("--out_dir")
    parser.add_argument("--val_fraction", type=float)
    args = parser.parse_args(["--out-dir=my-run", "--val-fraction", "0.5"])
    assert (args.out_dir, args.val_fraction) == ("my-run", 0.5)
    with pytest.raises(UserError, match="did you mean --out_dir"):
        parser.parse_args(["--outdir=x"])


@pytest.mark.slow
def test_traceback_env_prints_the_cause_behind_the_one_line_error(tmp_path):
    (tmp_path / "best_model_params.pt").write_bytes(b"PK\x03\x04 then nothing a zip file needs")
    command = [sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir", str(tmp_path)]
    plain = subprocess.run(command, capture_output=True, text=True)
    verbose = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TRACEBACK": "1"})
    for result in (plain, verbose):
        assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("error: ")
        assert "is corrupt or truncated" in result.stderr
    assert "Traceback" not in plain.stderr
    assert "Traceback" in verbose.stderr and "The above exception was the direct cause" in verbose.stderr


@pytest.mark.parametrize("device_type, faster", [("cpu", "float32"), ("cuda", "float16")])
def test_asking_for_bfloat16_where_it_is_emulated_warns_in_one_line_and_names_the_faster_dtype(
        monkeypatch, capsys, device_type, faster):
    monkeypatch.setattr(common, "native_bf16", lambda kind: False)
    common.warn_if_bf16_is_emulated(device_type)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "emulated" in lines[0]
    assert f"--dtype={faster}, which is faster here" in lines[0]
    monkeypatch.setattr(common, "native_bf16", lambda kind: True)
    common.warn_if_bf16_is_emulated(device_type)
    assert capsys.readouterr().err == ""


def test_sample_py_warns_about_emulated_bfloat16_only_when_asked_for_it(monkeypatch, capsys):
    monkeypatch.setattr(common, "native_bf16", lambda kind: False)
    assert common.resolve_dtype("auto", "cpu", generating=True) == torch.float32  # auto never picks emulated bf16
    assert capsys.readouterr().err == ""
    for dtype, warned in (("auto", False), ("bfloat16", True)):  # asked for: done, with the warning
        result = run_in_process("sample.py", "--out_dir=nowhere", f"--dtype={dtype}", "--device=cpu")
        assert result.stderr.startswith("warning: this CPU has no bfloat16 arithmetic") == warned, result.stderr


def test_native_bf16_follows_the_cpus_instructions(monkeypatch):
    for flags, expected in (({"avx512_bf16": True}, True), ({"amx_bf16": True}, True), ({"avx2": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
        assert common.native_bf16("cpu") is expected
    assert common.native_bf16("mps") is False
