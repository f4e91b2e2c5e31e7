"""The ``attention-jax`` command: ``attention-jax bench ...`` and ``attention-jax train ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

__all__ = ["main", "HelpFormatter"]

_COMMANDS = {
    "bench": ("attention_jax.bench.cli", "main", "time every mechanism against PyTorch"),
    "train": ("attention_jax.train.cli", "main", "train a model on a tfds dataset"),
    "convert": ("attention_jax.interop.convert", "main", "timm weights <-> attention-jax"),
}


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that states a default once, where it says something.

    argparse's ``ArgumentDefaultsHelpFormatter`` appends ``(default: X)`` to every option:
    ``(default: True)`` on an inverted ``--no-x`` flag, ``(default: None)``, a second default
    after a help text that already gives one, and Python reprs of tuples. This one appends
    ``(default: X)`` only to options taking a value, whose default is not None and whose help
    does not mention a default already; sequences are shown comma-separated.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.help in (None, argparse.SUPPRESS) or "default" in text.lower()
                or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or isinstance(action.default, list) and not action.default):
            return action.help
        return f"{text} (default: {_shown(action.default)})"


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, PurePath):
        text = str(value)
    else:
        text = str(value)
    return text.replace("%", "%%")  # help strings are %-formatted


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; each sub-command parses its own arguments.

    Args:
      argv: command-line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Process exit code.
    """
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        lines = [f"  {name:<6} {help_}" for name, (_, _, help_) in _COMMANDS.items()]
        print("usage: attention-jax {bench,train} [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, func, _ = _COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
