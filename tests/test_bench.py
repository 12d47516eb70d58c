"""bench.py and bench_finetune.py run end to end and record their sections, on a tiny model and
small inputs, in a file of the test's (the real measurements use the default model, the
benchmark's own model and real text, which tests never do)."""
import functools
import os
import re

import pytest

import bench
import bench_finetune
from conftest import ROOT, make_stories, run_in_process, write_txt
from model import GPTConfig

# The model each script measures (bench.py the default GPT, 30M parameters; bench_finetune.py a
# 4-layer, 128-wide one) makes a run take minutes on a CPU; a tiny one runs the same code in seconds.
# bench.py feeds its model random tokens and a made-up sequence: any vocabulary does.
BENCH_MODEL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=256)
FINETUNE_MODEL = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4)


@pytest.fixture
def real_record_untouched():
    path = os.path.join(ROOT, "BENCHMARKS.md")
    before = open(path, "rb").read()
    yield
    assert open(path, "rb").read() == before


def recorded_sections(record):
    """{key: text} of the bench sections in a results file (bench.record's markers)."""
    return dict(re.findall(r"<!-- bench: (\S+) -->\n(.*?)<!-- /bench: \1 -->", record, flags=re.S))


@pytest.mark.slow
def test_bench_measures_every_section_and_records_the_rows_in_its_output(tmp_path, monkeypatch,
                                                                         real_record_untouched):
    monkeypatch.setattr(bench, "GPTConfig", functools.partial(GPTConfig, **BENCH_MODEL))
    output = tmp_path / "BENCHMARKS.md"
    result = run_in_process("bench.py", "--quick", "--batch_size=2", "--prepare_mb", "1", "2", "--plain_mb", "1",
                            "--output", output)
    assert result.returncode == 0, result.stderr
    record = output.read_text()
    sections = recorded_sections(record)
    assert record.startswith("# Benchmarks\n") and len(sections) == 4, sections.keys()  # train, sample, prepare, plain
    assert all(text.strip() in result.stdout for text in sections.values())  # what it recorded, it printed
    section = "".join(sections.values())
    for row in ("| matmul ceiling, fp32, fastest of the step's shapes |", "| train step, batch 2x32, fp32",
                "| train MFU vs the measured ceiling |", "| sample 200 tokens, prompt 4, greedy, no cache, float32 |",
                "| sample speed-up, compiled KV-cache step", "| batch speed-up, 8 stories vs 1 |",
                "| sample.py defaults with --compile: 1 story / 8 stories in one batch |",
                "| prepare.py, 1 MB of text, whole run |", "| prepare.py, 2 MB, peak RSS of the process tree |",
                "| prepare.py, marginal rate (larger minus smaller run) |",
                "| prepare.py, 1 MB as one document (1 documents) |", "| prepare.py, one document vs stories: rate |"):
        assert row in section, row


@pytest.mark.slow
def test_bench_finetune_runs_scratch_and_fine_tunes_and_records_the_rows_in_its_output(tmp_path, monkeypatch,
                                                                                       real_record_untouched):
    model = [f"--{name}={value}" for name, value in FINETUNE_MODEL.items()]
    monkeypatch.setattr(bench_finetune, "MODEL", model + [flag for flag in bench_finetune.MODEL
                                                          if flag.split("=")[0][2:] not in FINETUNE_MODEL])
    write_txt(tmp_path / "pretrain.txt", make_stories(200, seed=1))
    write_txt(tmp_path / "target.txt", make_stories(200, seed=2))
    output = tmp_path / "BENCHMARKS.md"
    # the shortest runs the recipes allow: scratch warms up for 30 steps, presets/finetune.py for 20
    result = run_in_process("bench_finetune.py", "--pretrain_text", tmp_path / "pretrain.txt", "--text",
                            tmp_path / "target.txt", "--pretrain_steps=30", "--steps=30", "--finetune_lrs=1e-3",
                            "--work", tmp_path / "work", "--plot", tmp_path / "finetune.png", "--output", output)
    assert result.returncode == 0, result.stderr
    record = recorded_sections(output.read_text())["finetune"]
    assert record.strip() in result.stdout  # what it recorded, it printed
    for row in ("| run | val loss @0 | val loss @20 | val loss @30 | wall-clock |", "| scratch | ",
                "| fine-tune lr 0.001 (best) | ", "- fine-tune lr 0.001: reaches scratch's final val loss"):
        assert row in record, row
    assert "sample.py failed" not in result.stdout
    assert result.stdout.count("\nROMEO:") == 3  # the samples before, after and from scratch, from the prompt on
    assert (tmp_path / "finetune.png").read_bytes().startswith(b"\x89PNG")
