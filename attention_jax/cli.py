"""The ``attention-jax`` command: ``attention-jax bench ...`` and ``attention-jax train ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

_COMMANDS = {
    "bench": ("benchmarks.__main__", "main", "time every mechanism against PyTorch"),
    "train": ("attention_jax.train.cli", "main", "train a model on a tfds dataset"),
    "convert": ("attention_jax.interop.convert", "main", "timm weights <-> attention-jax"),
}


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
