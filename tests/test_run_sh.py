"""run.sh: one command from a fresh clone to stories, each stage skipped when its output is there."""
import os
import shutil
import signal
import subprocess

import pytest

from checkpoint import load_checkpoint
from conftest import PROCESS_TIMEOUT, ROOT, make_stories, write_txt

# A recipe small enough for seconds on a CPU, with its data step as a preset carries it.
TINY_PRESET = """# prepare: python prepare.py --vocab_size=300
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 4
eval_interval = 2
eval_iters = 2
device = "cpu"
compile = "false"
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The files a fresh clone of this tree holds (tracked, or new and not ignored), a tiny
    preset and a text of stories beside them."""
    folder = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):  # (a file deleted but not yet committed is listed too)
            os.makedirs(folder / "repo" / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), folder / "repo" / name)
    (folder / "tiny.py").write_text(TINY_PRESET)
    write_txt(folder / "stories.txt", make_stories(300))
    return folder


def run_sh(clone, *args, env=None):
    return subprocess.run(["bash", "run.sh", f"--preset={clone / 'tiny.py'}", *map(str, args)], cwd=clone / "repo",
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def first_run(clone):
    result = run_sh(clone, "--input", clone / "stories.txt")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_one_command_prepares_trains_evaluates_and_writes_stories(clone, first_run):
    repo = clone / "repo"
    assert (repo / "data-stories" / "tokenizer.json").is_file()  # the preset's own vocabulary, from the text given
    assert load_checkpoint(str(repo / "out-tiny-stories" / "ckpt.pt"))["step"] == 4
    out = first_run.stdout
    assert out.index("== 1/4") < out.index("== 2/4") < out.index("bits/byte") < out.index("== 4/4")
    assert out.split("== 4/4")[1].split("== done")[0].count("Once upon a time") == 3  # three stories
    assert "python sample.py --out_dir=out-tiny-stories" in out and "python export.py" in out


@pytest.mark.slow
def test_a_modern_block_run_is_not_offered_an_export_it_cannot_do(clone, first_run):
    result = run_sh(clone, "--input", clone / "stories.txt", "--out_dir=out-modern", "--pos_emb=rope", "--max_iters=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "python sample.py --out_dir=out-modern" in result.stdout and "python export.py" not in result.stdout


@pytest.mark.slow
def test_run_again_it_skips_what_is_done_and_a_flag_for_train_py_takes_it_further(clone, first_run):
    ckpt = clone / "repo" / "out-tiny-stories" / "ckpt.pt"
    before = ckpt.read_bytes()
    again = run_sh(clone, "--input", clone / "stories.txt")
    assert again.returncode == 0, again.stderr
    assert "skipping" in again.stdout and "nothing left to train" in again.stdout
    assert ckpt.read_bytes() == before  # the finished run is not trained or saved again
    further = run_sh(clone, "--input", clone / "stories.txt", "--max_iters=6")
    assert further.returncode == 0, further.stderr
    assert "resuming from out-tiny-stories/ckpt.pt at step 4" in further.stdout
    assert load_checkpoint(str(ckpt))["step"] == 6


@pytest.mark.slow
def test_a_stopped_run_resumes_where_it_stopped(clone, tmp_path):
    flags = ["--input", clone / "stories.txt", "--out_dir=out-stopped", "--max_iters=100000", "--eval_interval=100000"]
    process = subprocess.Popen(["bash", "run.sh", f"--preset={clone / 'tiny.py'}", *map(str, flags)],
                               cwd=clone / "repo", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("step 1/"):
                break
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches every process of the job
        process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        process.kill()
    assert process.returncode != 0  # the run did not finish: no evaluation, no stories
    stopped_at = load_checkpoint(str(clone / "repo" / "out-stopped" / "ckpt.pt"))["step"]
    resumed = run_sh(clone, *flags[:3], f"--max_iters={stopped_at + 2}", "--eval_interval=100000")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from out-stopped/ckpt.pt at step {stopped_at}" in resumed.stdout


@pytest.mark.slow
def test_offline_without_local_text_is_one_line_naming_the_flag_and_writes_nothing(clone, tmp_path):
    result = run_sh(clone, "--out_dir=out-offline", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--input" in errors[0] and "Traceback" not in result.stderr
    assert not (clone / "repo" / "data").exists() and not (clone / "repo" / "out-offline").exists()


def test_a_wrong_flag_is_one_line_before_any_work(clone):
    result = run_sh(clone, "--input", clone / "stories.txt", "--max_iter=5")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'max_iter'; did you mean")
    assert "== 1/4" not in result.stdout
