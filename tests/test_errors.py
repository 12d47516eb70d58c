"""Bad input: one `error:` line saying what is wrong and what to do, non-zero exit, no traceback,
and nothing already saved is lost."""
import json

import pytest
import torch

from common import UserError, resolve_dtype
from conftest import TINY_RUN, assert_clean_error, copy_of, run_in_process, run_script

# Each check runs train.py's and sample.py's main() in this process (run_in_process): the input is
# refused before any work, and a program would spend seconds importing torch for it. The scripts'
# own tests check the same one line from a real program (test_train.py, test_sample.py).


def train_with(data_dir, out_dir, *flags, run=run_in_process):
    return run("train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY_RUN, "--max_iters=1", *flags)


def test_missing_data_dir_says_to_run_prepare(tmp_path):
    assert_clean_error(train_with(tmp_path / "nodata", tmp_path / "out"), "not found", "prepare.py")


def test_missing_bin_says_to_run_prepare(tiny_data, tmp_path):
    data = copy_of(tiny_data, tmp_path)
    (data / "validation.bin").unlink()
    assert_clean_error(train_with(data, tmp_path / "out"), "validation.bin not found", "prepare.py")


def test_bin_that_does_not_match_meta_json(tiny_data, tmp_path):
    data = copy_of(tiny_data, tmp_path)
    with open(data / "train.bin", "ab") as f:
        f.write(b"\x00")  # one stray byte: not whole uint16 tokens
    assert_clean_error(train_with(data, tmp_path / "out"), "train.bin holds", "prepare.py --force")


def test_meta_json_with_another_dtype(tiny_data, tmp_path):
    data = copy_of(tiny_data, tmp_path)
    meta = json.loads((data / "meta.json").read_text())
    meta["dtype"] = "uint32"
    (data / "meta.json").write_text(json.dumps(meta))
    assert_clean_error(train_with(data, tmp_path / "out"), "uint32")


def test_validation_split_smaller_than_one_window(tiny_data, tmp_path):
    data = copy_of(tiny_data, tmp_path)
    (data / "validation.bin").write_bytes((data / "validation.bin").read_bytes()[:20])  # 10 tokens
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["validation"]["tokens"] = 10
    (data / "meta.json").write_text(json.dumps(meta))
    assert_clean_error(train_with(data, tmp_path / "out"), "validation split has 10 tokens", "fewer than one window")


def test_unknown_and_mistyped_knobs(tiny_data, tmp_path):
    assert_clean_error(train_with(tiny_data, tmp_path / "out", "--learning_rat=1e-3"), "--learning_rate")
    assert_clean_error(train_with(tiny_data, tmp_path / "out", "--batch_size=abc"), "batch_size", "not a valid int")


@pytest.mark.parametrize("flags, fragment", [
    (["--n_embd=30", "--n_head=4"], "not divisible"),
    (["--block_size=0"], "block_size=0"),
    (["--batch_size=0"], "batch_size=0"),
    (["--min_lr=1", "--learning_rate=1e-3"], "min_lr"),
])
def test_impossible_config(tiny_data, tmp_path, flags, fragment):
    assert_clean_error(train_with(tiny_data, tmp_path / "out", *flags), fragment)


def test_cuda_requested_without_cuda(tiny_data, tmp_path):
    assert_clean_error(train_with(tiny_data, tmp_path / "out", "--device=cuda"), "CUDA is not available")


@pytest.mark.slow
def test_a_compile_that_fails_is_a_one_line_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # inductor needs a C++ compiler on a CPU
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    # a program: inductor keeps the compiler it found, and compiled code, in the process
    result = train_with(tiny_data, tmp_path / "out", "--compile=true", run=run_script)
    assert_clean_error(result, "torch.compile failed", "C++ compiler", "--compile=false")


def test_bf16_requested_where_unsupported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match="bfloat16 is not supported"):
        resolve_dtype("bfloat16", "cuda")
    assert resolve_dtype("auto", "cuda") == torch.float16  # auto falls back to fp16 + GradScaler
    assert resolve_dtype("float16", "cpu") == torch.float16  # CPU autocast takes float16 (tests use it)
    assert resolve_dtype("auto", "cpu") == torch.float32  # training on a CPU: float32, bf16 instructions or not


def test_out_dir_that_cannot_be_created(tiny_data, tmp_path):
    (tmp_path / "a_file").write_text("")
    assert_clean_error(train_with(tiny_data, tmp_path / "a_file" / "out"), "cannot create --out_dir")


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_and_sample(trained_run, tiny_data, tmp_path):
    run = copy_of(trained_run, tmp_path)
    data = (run / "ckpt.pt").read_bytes()
    (run / "ckpt.pt").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    (run / "best_model_params.pt").write_bytes(b"not a checkpoint")
    best_before = (run / "best_model_params.pt").read_bytes()
    assert_clean_error(train_with(tiny_data, run, "--init_from=resume", "--max_iters=3"), "corrupt or truncated")
    assert_clean_error(run_in_process("sample.py", "--out_dir", run), "is not a checkpoint")
    assert (run / "best_model_params.pt").read_bytes() == best_before


def test_resume_without_a_checkpoint(tiny_data, tmp_path):
    assert_clean_error(train_with(tiny_data, tmp_path / "empty", "--init_from=resume"), "does not exist")


@pytest.mark.slow
def test_checkpoint_of_another_architecture(trained_run, tiny_data, tmp_path):
    run = copy_of(trained_run, tmp_path)
    ckpt_before = (run / "ckpt.pt").read_bytes()
    assert_clean_error(train_with(tiny_data, run, "--init_from=resume", "--n_layer=3", "--max_iters=3"),
                       "another architecture", "n_layer=2 in the checkpoint but 3 now")
    assert (run / "ckpt.pt").read_bytes() == ckpt_before
    config = json.loads((run / "config.json").read_text())
    config["model_args"]["n_embd"] = 64
    (run / "config.json").write_text(json.dumps(config))
    assert_clean_error(run_in_process("sample.py", "--out_dir", run), "does not fit the architecture")


@pytest.mark.slow
def test_resuming_with_the_other_optimizer_is_refused(trained_run, tiny_data, tmp_path):
    adamw_run = copy_of(trained_run, tmp_path)
    ckpt_before = (adamw_run / "ckpt.pt").read_bytes()
    assert_clean_error(train_with(tiny_data, adamw_run, "--init_from=resume", "--optimizer=muon", "--max_iters=3"),
                       "trained with --optimizer=adamw, not --optimizer=muon", "resume with --optimizer=adamw",
                       "another --out_dir")
    assert (adamw_run / "ckpt.pt").read_bytes() == ckpt_before
    muon_run = tmp_path / "muon"
    assert train_with(tiny_data, muon_run, "--optimizer=muon", run=run_script).returncode == 0  # trains: a program
    assert_clean_error(train_with(tiny_data, muon_run, "--init_from=resume", "--max_iters=3"),
                       "trained with --optimizer=muon, not --optimizer=adamw", "resume with --optimizer=muon")


def test_sample_without_a_run(tmp_path):
    assert_clean_error(run_in_process("sample.py", "--out_dir", tmp_path / "nothing"), "does not exist", "train")


@pytest.mark.slow
def test_empty_prompt(trained_run):
    assert_clean_error(run_in_process("sample.py", "--out_dir", trained_run, "--prompt", "  "), "--prompt is empty")


@pytest.mark.slow
def test_unknown_sample_flag_names_close_matches(trained_run):
    assert_clean_error(run_in_process("sample.py", "--out_dir", trained_run, "--temprature=0.5"), "--temperature")


@pytest.mark.slow
def test_sample_given_a_folder_or_a_file_that_is_not_a_checkpoint(trained_run, tmp_path):
    assert_clean_error(run_in_process("sample.py", "--checkpoint", trained_run), "is a folder, not a checkpoint file")
    (tmp_path / "notes.txt").write_text("a shopping list")
    assert_clean_error(run_in_process("sample.py", "--checkpoint", tmp_path / "notes.txt"),
                       "is not a checkpoint (not a file that torch.save wrote)")
