"""Execute every teaching notebook in place, so it is stored with its outputs (plots visible when
browsed): ``python notebooks/execute.py [NAME ...]`` (``make notebooks``).

Each notebook runs top to bottom on a fresh ``python3`` kernel of this interpreter, in a scratch
working directory (a notebook writes nothing into the repository), with the inline matplotlib
backend so figures are kept as PNG outputs. ``tests/test_notebooks.py`` checks that the stored
notebooks are complete and executes them again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600


def execute(path: Path) -> None:
    """Run ``path`` on a fresh kernel and write it back with its outputs."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": scratch}})
        client.execute()
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook stems (default: all)")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names or p.name in args.names]
    for path in paths:
        print(f"executing {path.name}", file=sys.stderr, flush=True)
        execute(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
