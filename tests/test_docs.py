"""The documents: README.md and docs/ link only to what exists, every command in their code blocks
names one of our scripts and flags it knows, the README stays a first read, and nothing in them
points at one machine's folders or at the tracker's numbers."""
import glob
import importlib
import os
import re
import shlex
import sys

import pytest

import common
import config
from conftest import ROOT

README_MAX_LINES = 300
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOCUMENTS = PAGES + ["BENCHMARKS.md"]  # BENCHMARKS.md's commands and links are checked too
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_BLOCKS = ("", "bash", "sh", "shell", "console")  # not python or text: their lines are not commands


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def without_code(text):
    """The text with fenced code blocks and inline code removed: what is left is prose and links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading):
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", read(path)), re.MULTILINE):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def links():
    for doc in DOCUMENTS:
        for target in LINK.findall(without_code(read(doc))):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not ours to check
                yield doc, target


@pytest.mark.parametrize("doc, target", list(links()), ids=lambda v: v)
def test_every_relative_link_resolves_to_a_file_and_an_anchor(doc, target):
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
    assert os.path.exists(os.path.join(ROOT, resolved)), f"{doc}: {target} -> {resolved} does not exist"
    if anchor:
        assert resolved.endswith(".md"), f"{doc}: {target}: an anchor into a file that is not markdown"
        assert anchor in anchors(resolved), f"{doc}: {target}: no heading in {resolved} has the anchor #{anchor}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(target.partition("#")[0]) for target in LINK.findall(read("README.md"))}
    assert not [page for page in PAGES[1:] if page not in linked]


# ----------------------------------------------------------------------------- commands

def commands():
    """(document, command line) of every command in the documents' shell and console blocks that
    runs one of our scripts: `python X.py ...` or `torchrun ... X.py ...`, after any VAR=value,
    `&&` or pipe."""
    for doc in DOCUMENTS:
        for language, block in FENCE.findall(read(doc)):
            if language not in COMMAND_BLOCKS:
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if language == "console":
                    if not line.startswith("$ "):
                        continue  # the command's output
                    line = line[2:]
                words = shlex.split(line, comments=True)
                segment = []
                for word in words + ["&&"]:
                    if word in ("&&", "||", "|", ";"):
                        if segment:
                            yield doc, segment
                        segment = []
                    elif segment or "=" not in word or word.startswith("-"):  # skip a leading VAR=value
                        segment.append(word)


def script_and_args(words):
    """(script, its arguments) of a command that runs one of ours, else None."""
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        return words[1], words[2:]
    if words[0] == "torchrun":
        at = next(i for i, word in enumerate(words) if word.endswith(".py"))
        return words[at], words[at + 1:]
    return None


OUR_COMMANDS = [(doc, words) for doc, words in commands() if script_and_args(words)]


class _Parser(Exception):
    """Raised instead of parsing: carries the script's argparse parser out of its main()."""


@pytest.fixture(scope="module")
def flags_of():
    """script -> the flags it knows: train.py's are config.py's knobs; the others' come from their
    own parser, built by their main() up to the point where it would parse (nothing runs)."""
    known = {"train.py": {f"--{name}" for name in config.defaults()}}

    def capture(self, args=None, namespace=None):
        raise _Parser(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.ArgumentParser, "parse_args", capture)
        for script in {script_and_args(words)[0] for _, words in OUR_COMMANDS} - set(known):
            if not os.path.isfile(os.path.join(ROOT, script)):
                continue  # the test below says so
            patch.setattr(sys, "argv", [script])
            with pytest.raises(_Parser) as caught:
                importlib.import_module(script[:-3]).main()
            parser = caught.value.args[0]
            known[script] = {flag for action in parser._actions for flag in action.option_strings}
    return known


def test_the_documents_have_commands_to_check():
    assert len(OUR_COMMANDS) > 30 and {"README.md", "docs/configuration.md"} <= {doc for doc, _ in OUR_COMMANDS}


@pytest.mark.parametrize("doc, words", OUR_COMMANDS, ids=[f"{doc}: {shlex.join(w)[:60]}" for doc, w in OUR_COMMANDS])
def test_each_command_names_an_existing_script_and_flags_it_knows(doc, words, flags_of, monkeypatch):
    script, args = script_and_args(words)
    assert os.path.isfile(os.path.join(ROOT, script)), f"{doc}: {script} is not one of our scripts"
    unknown = [arg for arg in args if arg.startswith("--") and common.underscored(arg).split("=")[0] not in flags_of[script]]
    assert not unknown, f"{doc}: {shlex.join(words)}: {script} has no {', '.join(unknown)}"
    for arg in args:  # the files of the repository a command names exist (presets above all)
        if re.match(r"(presets|tests|docs)/", arg):
            assert os.path.exists(os.path.join(ROOT, arg)), f"{doc}: {shlex.join(words)}: no {arg}"
    if script == "train.py":  # and its values and presets are ones config.py takes
        monkeypatch.chdir(ROOT)
        config.parse_args(args)


# ----------------------------------------------------------------------------- size and hygiene

def test_the_readme_is_a_first_read():
    assert len(read("README.md").splitlines()) <= README_MAX_LINES


MACHINE_PATH = re.compile(r"/tmp/|/work/|/root/")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_no_machine_paths_or_issue_numbers_in_the_documents(doc):
    text = read(doc)
    assert not MACHINE_PATH.findall(text) and not ISSUE_NUMBER.findall(text)


def test_no_issue_numbers_in_the_code():
    code = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))
    assert not [os.path.relpath(p, ROOT) for p in code if ISSUE_NUMBER.search(open(p, encoding="utf-8").read())]
