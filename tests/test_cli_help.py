"""``--help`` of ``attention-jax`` and of every subcommand: exit 0, and every option explained
once, without argparse artefacts (a default on a flag, a second default, a stray quote, a
Python repr).

The subcommands come from ``attention_jax.cli._COMMANDS``, so a new one is covered at once.
"""

import argparse
import os
import re
import subprocess
import sys

import pytest

from attention_jax import cli

COMMANDS = sorted(cli._COMMANDS)
_REPR = re.compile(r"\(\s*'|\['|\{'|\(default: None\)|\(default: \(|\(default: \[|<[a-zA-Z_.]+ "
                   r"object at 0x|\(default: <")


_IN_WORD = re.compile(r"(?<=[A-Za-z])'(?=[A-Za-z])")


def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "COLUMNS": "100", "JAX_PLATFORMS": "cpu"}


def test_top_level_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "attention_jax.cli", "--help"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        line = [x for x in proc.stdout.splitlines() if x.split()[:1] == [name]]
        assert line and len(line[0].split()) > 1, f"{name} is not listed with its help"


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_exits_zero(name):
    proc = subprocess.run([sys.executable, "-m", "attention_jax.cli", name, "--help"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: attention-jax {name}"), proc.stdout[:200]


def _parser_of(name, monkeypatch, capsys):
    """Run ``attention-jax NAME --help`` in process and catch the parser that printed."""
    seen = []
    original = argparse.ArgumentParser.print_help

    def print_help(self, file=None):
        seen.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", print_help)
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code in (0, None)
    capsys.readouterr()
    assert len(seen) == 1
    return seen[0]


def _entries(parser):
    """Each option's help entry as ``--help`` prints it, one string per option."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        formatter = parser._get_formatter()
        formatter.add_argument(action)
        out.append((action, " ".join(formatter.format_help().split())))
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_explained_once_and_cleanly(name, monkeypatch, capsys):
    parser = _parser_of(name, monkeypatch, capsys)
    problems = []
    for action, text in _entries(parser):
        flag = max(action.option_strings, key=len) if action.option_strings else action.dest
        if not (action.help or "").strip():
            problems.append(f"{flag}: no help text")
            continue
        help_text = text.split(" ", 1)[1] if " " in text else ""
        if action.nargs == 0 and "(default:" in help_text:
            problems.append(f"{flag}: a flag shows a default: {help_text!r}")
        if flag.startswith("--no-") and "default: True" in help_text:
            problems.append(f"{flag}: shows the default of the inverted value: {help_text!r}")
        if help_text.lower().count("default") > 1:
            problems.append(f"{flag}: default given twice: {help_text!r}")
        for quote in ("'", '"', "`"):
            if _IN_WORD.sub("", help_text).count(quote) % 2:  # "row's" is not a stray quote
                problems.append(f"{flag}: stray {quote}: {help_text!r}")
        if _REPR.search(help_text):
            problems.append(f"{flag}: a Python repr: {help_text!r}")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_argparse_defaults(monkeypatch, capsys):
    """The checks above go red on what ArgumentDefaultsHelpFormatter prints."""
    bad = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bad.add_argument("--no-eval", dest="eval", action="store_false", help="skip it")
    bad.add_argument("--dtype", default=("float32",), help="dtypes")
    bad.add_argument("--data-dir", default=None, help="data directory (default: tfds')")
    bad.add_argument("--seed", type=int, default=0)
    texts = {max(a.option_strings, key=len): t for a, t in _entries(bad) if a.option_strings
             and a.dest != "help"}
    assert "(default: True)" in texts["--no-eval"]
    assert _REPR.search(texts["--dtype"])
    assert texts["--data-dir"].lower().count("default") == 2
    assert next(a for a in bad._actions if a.dest == "seed").help is None
