"""bench_optimizers.py: the AdamW / Muon comparison runs end to end and records its verdicts in
its own section of the results file (on a small text here; the real measurement reads
tinyshakespeare.txt, which tests never do)."""
import pytest

from conftest import assert_clean_error, make_stories, run_in_process, run_script


def bench_on_stories(tmp_path, *flags):
    """bench_optimizers.py on 200 synthetic stories, a 1-layer model and 4 steps; (result, output file)."""
    text = tmp_path / "stories.txt"
    text.write_text("\n\n".join(make_stories(200)), encoding="utf-8")
    output = tmp_path / "BENCHMARKS.md"
    result = run_script("bench_optimizers.py", "--text", text, "--steps=4", "--warmup=1", "--eval_every=2",
                        "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
                        *flags, "--output", output)
    assert result.returncode == 0, result.stderr
    return result, output


@pytest.mark.slow
def test_the_comparison_runs_on_a_small_text_and_records_its_rows_in_its_section(tmp_path):
    result, output = bench_on_stories(tmp_path, "--adamw_lrs=1e-3,3e-3", "--muon_lrs=0.02")
    record = output.read_text()
    section = record.split("<!-- bench: optimizers-")[1].split("-->", 1)[1].split("<!-- /bench:")[0]
    assert section.strip() in result.stdout and f"recorded in {output}, section optimizers-" in result.stdout
    assert "`python bench_optimizers.py --text " in section and "--output" not in section
    for row in ("| AdamW lr 0.001, 4 steps |", "| AdamW lr 0.003, 4 steps", "| Muon lr 0.02, 4 steps (best) |",
                "val loss @2 | val loss @4 |", "best Muon with a 3-step schedule", "best AdamW with a 6-step schedule",
                "steps Muon needs to reach AdamW's", "steps AdamW needs to reach Muon's",
                "wall-clock per step, best Muon / best AdamW"):
        assert row in record, row


def test_a_missing_text_is_a_clean_error(tmp_path):
    assert_clean_error(run_in_process("bench_optimizers.py", "--text", tmp_path / "nothing.txt"), "does not exist")


@pytest.mark.slow
def test_archs_compares_the_modern_block_with_gpt2_under_each_optimizer(tmp_path):
    _, output = bench_on_stories(tmp_path, "--adamw_lrs=1e-3", "--muon_lrs=0.02", "--archs=gpt2,modern",
                                 "--arch_budget=0.5")
    record = output.read_text()
    assert "<!-- bench: gpt2-vs-modern-cpu" in record
    for row in ("| AdamW lr 0.001, 4 steps (best) |", "| modern, AdamW lr 0.001, 4 steps (best) |",
                "| modern, Muon lr 0.02, 4 steps (best) |", "GPT-2's block and presets/modern.py's",
                "| AdamW: modern (lr 0.001) against gpt2 (lr 0.001), final val loss at 4 steps |",
                "| Muon: modern (lr 0.02) against gpt2 (lr 0.02), wall-clock per step (in turn) |",
                "| Muon: modern (lr 0.02) against gpt2 (lr 0.02), final val loss of a 2-step schedule |",
                "steps to reach gpt2's"):
        assert row in record, row


@pytest.mark.slow
def test_archs_without_budget_runs_compares_at_equal_steps_only(tmp_path):
    _, output = bench_on_stories(tmp_path, "--adamw_lrs=1e-3", "--muon_lrs=0.02", "--archs=gpt2,modern",
                                 "--arch_budget=0")
    record = output.read_text()
    assert "| Muon: modern (lr 0.02) against gpt2 (lr 0.02), final val loss at 4 steps |" in record
    assert "schedule" not in record and "steps to reach" not in record


def test_an_unknown_arch_is_a_clean_error(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    assert_clean_error(run_in_process("bench_optimizers.py", "--text", text, "--archs=gpt2,llama"), "no presets/llama.py")
