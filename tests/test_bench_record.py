"""bench.record: a bench run replaces its own section of BENCHMARKS.md and nothing else."""
import os
import re

import pytest

from bench import record, recorded_command, results_text
from common import UserError
from conftest import ROOT

BEFORE = ("# Benchmarks\n\nHand-written text, kept as it is.\n\n## CPU: sampling\n\n"
          "<!-- bench: sample-cpu -->\nold sample results\n<!-- /bench: sample-cpu -->\n\n"
          "A comparison written by hand, with odd bytes: ±15%, “quotes”, a CRLF line\r\n\n"
          "## prepare.py\n\n<!-- bench: prepare -->\nold prepare results\n| a | b |\n<!-- /bench: prepare -->\n"
          "trailing text\n")


def test_a_run_replaces_its_own_section_and_leaves_every_other_byte(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_bytes(BEFORE.encode("utf-8"))
    record(path, "sample-cpu", "Sampling (cpu)", "new sample results\n")
    after = path.read_bytes().decode("utf-8")
    assert after == BEFORE.replace("old sample results\n", "new sample results\n")
    record(path, "prepare", "prepare.py", "new prepare results\n")
    assert path.read_bytes().decode("utf-8") == after.replace("old prepare results\n| a | b |\n",
                                                             "new prepare results\n")


def test_a_section_the_file_lacks_is_added_at_its_end_under_its_heading(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_bytes(BEFORE.encode("utf-8"))
    record(path, "train-cuda", "Training step (cuda)", "gpu results\n")
    after = path.read_bytes().decode("utf-8")
    assert after == BEFORE + "\n## Training step (cuda)\n\n<!-- bench: train-cuda -->\ngpu results\n<!-- /bench: train-cuda -->\n"
    record(path, "train-cuda", "Training step (cuda)", "newer gpu results\n")  # from then on, replaced in place
    assert path.read_bytes().decode("utf-8") == after.replace("gpu results", "newer gpu results")


def test_a_missing_file_is_created_with_the_section(tmp_path):
    path = tmp_path / "results.md"
    record(path, "finetune", "Fine-tuning", "results\n")
    assert path.read_text() == "# Benchmarks\n\n## Fine-tuning\n\n<!-- bench: finetune -->\nresults\n<!-- /bench: finetune -->\n"


@pytest.mark.parametrize("broken, message", [
    ("<!-- bench: prepare -->\nno end\n", "has no end marker"),
    ("<!-- bench: prepare -->\na\n<!-- /bench: prepare -->\n<!-- bench: prepare -->\nb\n<!-- /bench: prepare -->\n",
     "more than once"),
])
def test_a_damaged_section_is_a_clean_error_and_the_file_is_left_alone(tmp_path, broken, message):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(broken)
    with pytest.raises(UserError, match=message):
        record(path, "prepare", "prepare.py", "new\n")
    assert path.read_text() == broken


def test_the_recorded_text_has_the_date_the_command_and_the_details_but_no_output_paths():
    command = recorded_command("bench.py", ["--sections=train", "--output", "/somewhere/B.md", "--note", "why",
                                            "--no_record", "--quick"])
    assert command == "python bench.py --sections=train --quick"
    assert recorded_command("bench_finetune.py", ["--text=a.txt", "--work=/scratch/w", "--plot", "p.png"]) == \
        "python bench_finetune.py --text=a.txt"
    text = results_text(command, "a machine; torch 9", "| figure | value |")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d, `python bench.py --sections=train --quick`: a machine; torch 9\n\n"
                        r"\| figure \| value \|\n", text)


def test_benchmarks_md_sections_are_well_formed():
    """Every section the bench scripts write is opened and closed once, so a run can replace it."""
    text = open(os.path.join(ROOT, "BENCHMARKS.md"), encoding="utf-8").read()
    begins = re.findall(r"^<!-- bench: (\S+) -->$", text, re.MULTILINE)
    ends = re.findall(r"^<!-- /bench: (\S+) -->$", text, re.MULTILINE)
    assert begins == ends and len(set(begins)) == len(begins)
    for key in begins:
        assert text.index(f"<!-- bench: {key} -->") < text.index(f"<!-- /bench: {key} -->")
