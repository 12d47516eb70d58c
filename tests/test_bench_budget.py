"""bench_budget.py: recipes trained for the same wall-clock, measured on held-out text, recorded."""
import pytest

from conftest import assert_clean_error, make_stories, run_in_process, run_script, write_txt

TINY = "--n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=4 --gradient_accumulation_steps=1"


@pytest.mark.slow
def test_each_recipe_gets_a_row_with_its_vocabulary_steps_epochs_and_held_out_bits_per_byte(tmp_path):
    write_txt(tmp_path / "train.txt", make_stories(300))
    write_txt(tmp_path / "held_out.txt", make_stories(30, seed=7))
    output = tmp_path / "results.md"
    result = run_script("bench_budget.py", f"--train_text={tmp_path / 'train.txt'}",
                        f"--held_out={tmp_path / 'held_out.txt'}", "--minutes=0.02", f"--work={tmp_path / 'work'}",
                        "--recipe", f"own=--vocab_size=300 {TINY}", "--recipe", f"gpt2={TINY}", f"--output={output}", "--stories=2")
    assert result.returncode == 0, result.stderr
    table = output.read_text().split("Story check")[0]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()
            if line.startswith(("| own |", "| gpt2 |"))}
    assert rows["own"][1] == "300" and rows["gpt2"][1] == "50,257"
    for cells in rows.values():
        steps, epochs, held_out = int(cells[3].replace(",", "")), float(cells[5]), float(cells[6])
        assert steps > 0 and epochs > 0 and 0 < held_out < 20
    assert (tmp_path / "work" / "data-300" / "tokenizer.json").is_file()  # learned from the training text
    assert output.read_text().count("<!-- bench: budget -->") == 1
    assert "| own | " in output.read_text().split("Story check")[1]  # each run's story check


def test_a_recipe_without_a_name_is_one_line(tmp_path):
    write_txt(tmp_path / "t.txt", make_stories(3))
    result = run_in_process("bench_budget.py", f"--train_text={tmp_path / 't.txt'}", f"--held_out={tmp_path / 't.txt'}",
                            "--recipe", "small")
    assert_clean_error(result, "--recipe 'small': write it as NAME=FLAGS")
