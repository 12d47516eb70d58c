"""sample.py: many stories in one batch, generation in bfloat16, and the interactive prompt."""
import copy
import io
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

import cpu_fast_paths
import model as model_module
import sample
from bench import learn_a_cycle
import common
from common import UserError, native_bf16
from conftest import (PROCESS_TIMEOUT, ROOT, TEST_DEVICE, assert_clean_error, run_in_process, run_script,
                      train_tiny_run)
from model import GPT, GPTConfig
from tokenizer import EOT_TOKEN

CYCLE_CONFIG = dict(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)


def trained_cycle_model(**options):
    """A tiny GPT trained in-process until it continues a repeating sequence of 23 distinct tokens:
    its greedy continuation is meaningful, with clear margins between the likeliest tokens."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CYCLE_CONFIG, **options))
    sequence = learn_a_cycle(model, steps=40, window=32, batch_size=16, learning_rate=3e-3)
    assert torch.equal(model.generate(sequence[None, 5:9], 60, temperature=0)[0], sequence[5:69])  # it learned
    return model, sequence


@pytest.fixture(scope="module")
def cycle_model():
    return trained_cycle_model()


# ----------------------------------------------------------------------------- one batch

DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not native_bf16("cpu"), reason="this CPU has no bf16 instructions"))]


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_rows_of_a_batch_equal_the_prompt_generated_alone(cycle_model, kv_cache, dtype):
    model, sequence = cycle_model
    model = sample.prepare_for_sampling(copy.deepcopy(model), "cpu", dtype)  # as sample.py runs it
    prompt = sequence[3:7].tolist()
    alone = sample.generate_stories(model, prompt, 1, 80, temperature=0, kv_cache=kv_cache)  # past block_size
    batch = sample.generate_stories(model, prompt, 4, 80, temperature=0, kv_cache=kv_cache)
    assert len(alone[0]) == 80
    assert batch == alone * 4


@pytest.mark.parametrize("kv_cache", [True, False])
def test_rows_of_a_batch_with_different_prompts_equal_each_prompt_alone(cycle_model, kv_cache):
    model, sequence = cycle_model
    prompts = torch.stack([sequence[0:5], sequence[11:16], torch.tensor([1, 2, 3, 4, 5])])  # the last: off-cycle
    batch = model.generate(prompts, 50, temperature=0, kv_cache=kv_cache)
    for row, prompt in enumerate(prompts):
        assert torch.equal(batch[row], model.generate(prompt[None], 50, temperature=0, kv_cache=kv_cache)[0]), row


@pytest.mark.parametrize("length", [50, 32])
def test_a_prompt_longer_than_the_context_keeps_its_last_block_and_says_so(cycle_model, capsys, length):
    model, sequence = cycle_model  # block_size 32
    prompt = sequence[:length].tolist()
    kept = sample.fit_to_context(prompt, 32)
    assert kept == prompt[-32:]
    note = "note: the prompt is 50 tokens; keeping its last 32 (the model's context)\n" if length > 32 else ""
    assert capsys.readouterr().err == note
    cached = sample.generate_stories(model, kept, 1, 40, temperature=0, kv_cache=True)
    plain = sample.generate_stories(model, kept, 1, 40, temperature=0, kv_cache=False)
    assert cached == plain == [sequence[length:length + 40].tolist()]  # the cycle goes on from the prompt's end


def scripted_model(rows_of_tokens):
    """A stand-in for GPT whose generate_tokens yields the given tokens, one column per step, and
    counts how many steps were taken."""
    steps = torch.tensor(rows_of_tokens).t()  # (steps, rows)
    model = SimpleNamespace(lm_head=SimpleNamespace(weight=torch.zeros(1)), steps_taken=0)

    def generate_tokens(idx, max_new_tokens, *args):
        assert idx.size(0) == steps.size(1)
        for column in steps[:max_new_tokens]:
            model.steps_taken += 1
            yield column[:, None]

    model.generate_tokens = generate_tokens
    return model


def test_each_story_is_cut_at_its_own_end_of_text_and_the_batch_stops_when_all_have():
    E = EOT_TOKEN
    model = scripted_model([[5, 6, E, 7, 8, 9, 9],
                            [1, 2, 3, 4, E, 5, 9],
                            [E, 1, 1, 1, 1, 1, 9]])
    stories = sample.generate_stories(model, [0], 3, max_new_tokens=7)
    assert stories == [[5, 6], [1, 2, 3, 4], []]  # nothing after a story's end-of-text
    assert model.steps_taken == 5  # the step where the last story ended


def test_ignore_eot_keeps_every_token_up_to_max_new_tokens():
    E = EOT_TOKEN
    model = scripted_model([[5, E, 7, 8], [E, 2, 3, 4]])
    stories = sample.generate_stories(model, [0], 2, max_new_tokens=3, eot_token=None)
    assert stories == [[5, E, 7], [E, 2, 3]]
    assert model.steps_taken == 3


class Decoder:
    def decode(self, tokens):
        return "".join(f" {t}" for t in tokens)


def test_streaming_several_stories_prints_each_whole_and_in_order(capsys):
    printer = sample.StoryPrinter(Decoder(), "P", num_samples=3, stream=True)
    printer.update([[1], [2], [3]], [False, True, False])
    assert capsys.readouterr().out == ""  # the second story has ended, but the first not yet
    printer.update([[1, 4], [2], [3, 5]], [True, True, False])
    assert capsys.readouterr().out == "P 1 4\n" + "-" * 40 + "\nP 2\n"
    printer.finish([[1, 4], [2], [3, 5, 6]])
    assert capsys.readouterr().out == "-" * 40 + "\nP 3 5 6\n"


def test_streaming_one_story_prints_each_token_as_it_comes(capsys):
    printer = sample.StoryPrinter(Decoder(), "P", num_samples=1, stream=True)
    printer.update([[1]], [False])
    printer.update([[1, 2]], [False])
    assert capsys.readouterr().out == "P 1 2"
    printer.finish([[1, 2, 3]])
    assert capsys.readouterr().out == " 3\n"


# ----------------------------------------------------------------------------- dtype

@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no bf16 instructions")
@pytest.mark.parametrize("kv_cache", [True, False])
def test_bfloat16_greedy_tokens_equal_float32_on_a_trained_model(cycle_model, kv_cache):
    model, sequence = cycle_model
    bf16 = sample.prepare_for_sampling(copy.deepcopy(model), "cpu", torch.bfloat16)
    assert type(bf16.lm_head) is cpu_fast_paths.PackedLinear and bf16.lm_head.weight.dtype == torch.bfloat16
    prompt = sequence[None, 8:12]
    expected = model.generate(prompt, 100, temperature=0, kv_cache=kv_cache)  # the window jumps 5 times
    assert torch.equal(bf16.generate(prompt, 100, temperature=0, kv_cache=kv_cache), expected)


def test_auto_dtype_for_generating_on_a_cpu_is_bfloat16_only_where_it_has_bf16_instructions(monkeypatch):
    for fast, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(common, "native_bf16", lambda kind: fast)
        assert common.resolve_dtype("auto", "cpu", generating=True) is expected
    assert common.resolve_dtype("float32", "cpu", generating=True) is torch.float32


def test_bfloat16_on_mps_is_refused():
    with pytest.raises(UserError, match="--dtype=bfloat16 is not supported"):
        common.resolve_dtype("bfloat16", "mps", generating=True)


# ----------------------------------------------------------------------------- --compile

def compiled_copy(model, batch_size):
    """A copy of model as sample.py --compile prepares it (float32, on TEST_DEVICE), compiled for
    batch_size stories."""
    compiled = sample.prepare_for_sampling(copy.deepcopy(model).to(TEST_DEVICE), TEST_DEVICE, torch.float32,
                                           compile=True)
    sample.compile_decode_step(compiled, batch_size)
    return compiled


@pytest.fixture
def fresh_compiles():
    """Forget earlier compiles of decode_step, before the test (another model's count as
    recompiles) and after it."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_decode_step_writes_the_eager_greedy_tokens(cycle_model, fresh_compiles):
    model, sequence = cycle_model
    compiled = compiled_copy(model, batch_size=2)
    prompts = torch.stack([sequence[8:12], torch.tensor([1, 2, 3, 4])])  # one on the cycle, one off it
    expected = model.generate(prompts, 100, temperature=0)  # on the CPU, eager; the window jumps 5 times
    assert torch.equal(compiled.generate(prompts.to(TEST_DEVICE), 100, temperature=0).cpu(), expected)


@pytest.mark.slow
def test_compiled_decode_step_with_rope_slides_its_window_without_recompiling_and_writes_the_eager_tokens(
        fresh_compiles):
    # RoPE's cache slides by one token past block_size: every step moves the window, unlike the
    # learned positions' jump every half block
    model, sequence = trained_cycle_model(pos_emb="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, bias=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = compiled_copy(model, batch_size=2)
        prompts = torch.stack([sequence[8:12], torch.tensor([1, 2, 3, 4])])
        expected = model.generate(prompts, 100, temperature=0)  # eager, on the CPU
        assert torch.equal(compiled.generate(prompts.to(TEST_DEVICE), 100, temperature=0).cpu(), expected)
    assert counters["stats"]["unique_graphs"] == 1


def logits_of_each_step(model, prompt, max_new_tokens, monkeypatch):
    """The logits generate() draws each token from, one (B, vocab) tensor per step."""
    steps, sample_next = [], model_module.sample_next

    def recording_sample_next(logits, *args):
        steps.append(logits.float().cpu())
        return sample_next(logits, *args)

    with monkeypatch.context() as patch:
        patch.setattr(model_module, "sample_next", recording_sample_next)
        tokens = model.generate(prompt, max_new_tokens, temperature=0)
    return tokens, steps


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_logits_at_every_step(cycle_model, fresh_compiles, monkeypatch):
    # a new generate() has a new KV cache: the compiled step must read that one, not the warm-up's
    model, sequence = cycle_model
    compiled = compiled_copy(model, batch_size=1)
    prompt = sequence[None, 2:6]
    eager_tokens, eager_logits = logits_of_each_step(model, prompt, 70, monkeypatch)
    compiled_tokens, compiled_logits = logits_of_each_step(compiled, prompt.to(TEST_DEVICE), 70, monkeypatch)
    assert torch.equal(compiled_tokens.cpu(), eager_tokens)
    assert len(compiled_logits) == len(eager_logits) == 70  # a token drawn from each step's logits
    for step, (eager, compiled) in enumerate(zip(eager_logits, compiled_logits)):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {step}: {m}")


@pytest.mark.slow
def test_compiled_decode_step_compiles_once_and_never_again_as_the_position_moves(cycle_model, fresh_compiles):
    model, sequence = cycle_model
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second compile raises instead of running
        compiled = compiled_copy(model, batch_size=2)
        prompt = sequence[None, 0:3].repeat(2, 1).to(TEST_DEVICE)
        compiled.generate(prompt, 100, temperature=0)  # every position, 5 refills
        compiled.generate(prompt, 40, temperature=0.8, top_k=5)  # sampling
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not TEST_DEVICE.startswith("cuda"), reason="CUDA graphs need a GPU: run with TEST_DEVICE=cuda")
def test_compiled_decode_step_runs_as_a_cuda_graph(cycle_model, fresh_compiles):
    model, sequence = cycle_model
    compiled = compiled_copy(model, batch_size=1)
    compiled.generate(sequence[None, 0:3].to(TEST_DEVICE), 50, temperature=0)
    assert counters["inductor"]["cudagraph_skips"] == 0  # e.g. "mutated inputs": the cache not a static address


def test_compile_without_the_kv_cache_is_refused():
    with pytest.raises(UserError, match="leave out --no_kv_cache"):
        sample.parse_args(["--compile", "--no_kv_cache"])


# ----------------------------------------------------------------------------- the script

@pytest.fixture(scope="module")
def story_run(tiny_data, tmp_path_factory):
    """A tiny model trained by train.py on the synthetic stories, for running sample.py on."""
    return train_tiny_run(tiny_data, tmp_path_factory.mktemp("story-run"), "--max_iters=20", "--eval_interval=20",
                          "--learning_rate=3e-3")


@pytest.mark.slow
def test_the_same_seed_writes_the_same_batch_of_stories(story_run):
    flags = ["--out_dir", story_run, "--num_samples", "4", "--temperature", "1.0", "--max_new_tokens", "30"]
    first, second = run_script("sample.py", *flags, "--seed", "7"), run_script("sample.py", *flags, "--seed", "7")
    other = run_script("sample.py", *flags, "--seed", "8")
    for result in (first, second, other):
        assert result.returncode == 0, result.stderr
    stories = first.stdout.split("-" * 40 + "\n")
    assert len(stories) == 4 and all(story.startswith("Once upon a time") for story in stories)
    assert len(set(stories)) > 1  # the rows of the batch draw their own tokens
    assert second.stdout == first.stdout
    assert other.stdout != first.stdout
    assert "4 stories" in first.stderr and "Traceback" not in first.stderr


@pytest.mark.slow
def test_sampling_without_compile_does_not_import_the_compiler(story_run):
    # torch._dynamo takes seconds to import, for nothing in eager mode
    result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "sample.py"), "--out_dir",
                             str(story_run), "--max_new_tokens", "5"], capture_output=True, text=True,
                            timeout=PROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported
    assert not [name for name in imported if name.startswith("torch._dynamo")]


def interactive(story_run, *flags, stdin=subprocess.PIPE):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir", str(story_run),
                             "--interactive", "--max_new_tokens", "20", *flags],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_interactive_writes_a_story_for_each_line_until_an_empty_one(story_run):
    process = interactive(story_run)
    stdout, stderr = process.communicate("Tom found a dog\nLily went to the park\n\nnever read\n",
                                         timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert any(line.startswith("Tom found a dog") for line in lines)
    assert any(line.startswith("Lily went to the park") for line in lines)
    assert "never read" not in stdout and "> " not in stdout  # no prompt sign: standard input is not a terminal
    assert stderr.count("tokens/s]") == 2 and "Traceback" not in stderr


@pytest.mark.slow
def test_interactive_ends_cleanly_at_the_end_of_input(story_run):
    process = interactive(story_run)
    stdout, stderr = process.communicate("Tom found a dog\n", timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    assert stdout.startswith("Tom found a dog") and "Traceback" not in stderr


@pytest.mark.slow
def test_interactive_ends_cleanly_on_ctrl_c(story_run):
    process = interactive(story_run)
    process.stdin.write("Tom found a dog\n")
    process.stdin.flush()
    assert process.stdout.readline().startswith("Tom found a dog")  # a story: it waits for the next prompt
    while "tokens/s]" not in process.stderr.readline():
        pass
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "interrupted" not in stderr


@pytest.mark.slow
def test_interactive_sampling_repeats_a_session_but_not_a_prompt(story_run, monkeypatch):
    # the seed is set once, at the start: the same prompts in the same order give the same
    # stories, while a prompt given twice in one session draws a story of its own each time
    def session(*prompts):
        monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{prompt}\n" for prompt in prompts)))
        result = run_in_process("sample.py", "--out_dir", story_run, "--interactive", "--temperature", "1.0",
                                "--max_new_tokens", "20", "--ignore_eot")
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("tokens/s]") == len(prompts)
        return result.stdout

    twice = session("Tom found a dog", "Tom found a dog")
    assert session("Tom found a dog", "Tom found a dog") == twice
    once = session("Tom found a dog")
    assert once.startswith("Tom found a dog") and twice.startswith(once)
    assert twice[len(once):].startswith("Tom found a dog") and twice[len(once):] != once


@pytest.mark.slow
def test_interactive_applies_the_flags_to_every_prompt(story_run):
    flags = ["--temperature", "0", "--dtype", "float32"]
    process = interactive(story_run, *flags)
    stdout, stderr = process.communicate("Tom found a dog\nLily went to the park\n", timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    one_at_a_time = ""
    for prompt in ("Tom found a dog", "Lily went to the park"):
        result = run_script("sample.py", "--out_dir", story_run, "--max_new_tokens", "20", "--prompt", prompt, *flags)
        assert result.returncode == 0, result.stderr
        one_at_a_time += result.stdout
    assert stdout == one_at_a_time


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_continued_from_its_end_with_and_without_the_kv_cache(story_run):
    flags = ["--out_dir", story_run, "--prompt", "Once upon a time " * 20, "--temperature", "0",
             "--max_new_tokens", "40"]
    cached, plain = run_script("sample.py", *flags), run_script("sample.py", *flags, "--no_kv_cache")
    for result in (cached, plain):
        assert result.returncode == 0, result.stderr
        assert "note: the prompt is 81 tokens; keeping its last 32 (the model's context)\n" in result.stderr
        assert result.stdout.startswith("Once upon a time " * 20)  # the whole prompt, then the story
    assert cached.stdout == plain.stdout


@pytest.mark.slow
def test_interactive_keeps_the_end_of_a_prompt_that_is_too_long_and_goes_on(story_run):
    process = interactive(story_run)
    stdout, stderr = process.communicate("Once upon a time " * 20 + "\nTom found a dog\n", timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    assert stderr.count("note: the prompt is") == 1 and stderr.count("tokens/s]") == 2
    assert "error:" not in stderr and "Traceback" not in stderr
    assert stdout.startswith("Once upon a time " * 20) and "\nTom found a dog" in stdout


@pytest.mark.slow
def test_interactive_shows_a_prompt_sign_only_on_a_terminal(story_run):
    user_side, script_side = os.openpty()  # a terminal: the script reads its stdin from script_side
    process = interactive(story_run, stdin=script_side)
    os.write(user_side, b"Tom found a dog\n\n")  # typed: a prompt, then an empty line
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    os.close(user_side)
    os.close(script_side)
    assert process.returncode == 0, stderr
    assert stdout.startswith("> Tom found a dog") and stdout.rstrip().endswith(">")


@pytest.mark.slow
def test_a_compile_that_fails_is_a_one_line_error(story_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # inductor needs a C++ compiler on a CPU
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    result = run_script("sample.py", "--out_dir", story_run, "--max_new_tokens", "5", "--compile", "--device=cpu")
    assert_clean_error(result, "torch.compile failed", "C++ compiler", "run without --compile")
    assert result.stdout == ""


def test_interactive_with_a_prompt_flag_is_refused():
    with pytest.raises(UserError, match="leave out --prompt"):
        sample.parse_args(["--interactive", "--prompt", "Once"])
