"""bench_stories.py: each figure of the story check against a hand-computed example, and a run of it."""
import pytest

import bench_stories
from conftest import run_script
from test_sample import scripted_model
from tokenizer import EOT_TOKEN, load_gpt2

TRAINING = bench_stories.TrainingText("the cat sat on the mat and then it slept well".split())


def test_repetition_is_the_share_of_4grams_that_repeat_one_earlier_in_the_same_story():
    # abcd bcda cdab dabc abcd: 5 4-grams, the last repeats the first; "x y z" has none
    assert bench_stories.repetition(["a b c d a b c d".split(), "x y z".split()]) == pytest.approx(1 / 5)
    # the same 4-gram in two stories is not a loop
    assert bench_stories.repetition(["a b c d".split(), "a b c d".split()]) == 0


def test_distinct_2_is_distinct_bigrams_over_all_bigrams_of_all_stories():
    # ab ba ab | ab bc: 5 bigrams, 3 distinct
    assert bench_stories.distinct_2(["a b a b".split(), "a b c".split()]) == pytest.approx(3 / 5)


def test_copying_counts_8grams_found_in_the_training_text_and_the_longest_copied_run():
    story = "so the cat sat on the mat and then it ran".split()
    # 4 windows of 8 words: the 2nd and 3rd are in the training text, in a row: 9 words copied
    assert bench_stories.copying([story], TRAINING) == (pytest.approx(2 / 4), 9)
    assert bench_stories.copying(["nothing here is from the training text at all".split()], TRAINING) == (0.0, 0)


def test_the_check_reports_the_share_of_stories_that_ended():
    figures = bench_stories.story_check(["a b", "c d", "e f", "g h"], [True, False, True, True], TRAINING)
    assert figures["ended"] == 0.75 and figures["stories"] == 4 and figures["mean_words"] == 2


def test_a_story_ended_when_it_reached_end_of_text_before_the_token_limit():
    enc = load_gpt2()
    ended = bench_stories.write(scripted_model([[464, EOT_TOKEN, 464]]), enc, 1, max_new_tokens=3, seed=0)
    full = bench_stories.write(scripted_model([[464, 464, 464]]), enc, 1, max_new_tokens=3, seed=0)
    assert ended == [(bench_stories.PROMPTS[0], bench_stories.PROMPTS[0] + enc.decode([464]), True)]
    assert full[0][2] is False


@pytest.mark.slow
def test_the_check_runs_on_a_run_folder_and_records_its_figures_and_stories(trained_run, tmp_path):
    output = tmp_path / "results.md"
    result = run_script("bench_stories.py", f"--out_dir={trained_run}", "--num_stories=3", "--max_new_tokens=8",
                        f"--output={output}", "--label=tiny")
    assert result.returncode == 0, result.stderr
    recorded = output.read_text()
    row = next(line for line in recorded.splitlines() if line.startswith("| tiny |"))
    assert len(row.split("|")) == 10  # the run and its 8 figures
    assert recorded.count("\n> Once upon a time") + recorded.count("\n> One day") + recorded.count("\n> Tom") == 3
