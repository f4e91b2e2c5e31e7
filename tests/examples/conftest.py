import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def examples():
    """The examples directory on sys.path (the scripts import each other as modules)."""
    sys.path.insert(0, str(EXAMPLES))
    yield EXAMPLES
    sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
    """A tfds data dir the examples build distorted_mnist (plain, RTS) into, once."""
    return str(tmp_path_factory.mktemp("tfds_examples"))
