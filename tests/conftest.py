import ctypes
import ctypes.util
import os
import zlib

# Before JAX creates its CPU backend: the code generator the suite compiles with (fast to
# compile; tests/codegen.py says why, tests/test_codegen.py that it gives the same numbers).
from tests import codegen

CODEGEN = codegen.apply()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Lowerings share MLIR contexts (tests/lowering.py says why, tests/test_lowering.py that the
# programs are the same).
from tests import lowering  # noqa: E402

MLIR_CONTEXT = lowering.install()

# The files with the longest tests (a notebook run, a subprocess that compiles the native
# kernels or installs the wheel, a full timm architecture), run first: under xdist a long test
# that starts last keeps its worker busy while the other one idles (`make test` runs with
# `--dist worksteal`, which moves the short tests queued behind them to the idle worker). The
# order of the tests inside each file, and of every other file, is unchanged.
SLOW_FIRST = (
    "tests/test_notebooks.py",
    "tests/test_codegen.py",
    "tests/native/test_variants.py",
    "tests/native/test_cache.py",
    "tests/test_packaging.py",
    "tests/models/test_zoo.py",
    "tests/examples/",
    "tests/train/",
)


def pytest_report_header(config):
    return [f"XLA:CPU code generator: {CODEGEN} (ATTENTION_JAX_TEST_CODEGEN; XLA_FLAGS="
            f"{os.environ.get('XLA_FLAGS', '')!r})",
            f"MLIR contexts: {MLIR_CONTEXT} (ATTENTION_JAX_TEST_MLIR_CONTEXT)"]


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        for i, prefix in enumerate(SLOW_FIRST):
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                return i
        return len(SLOW_FIRST)

    items[:] = sorted(items, key=rank)  # stable: collection order within a rank


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


@pytest.fixture(scope="module", autouse=True)
def _return_freed_memory():
    """After each test module, hand the heap memory glibc keeps after frees back to the OS.

    XLA's compiles leave most of a worker's resident memory in freed-but-kept malloc pages:
    three zoo models took a worker from 0.6 to 1.6 GiB, and ``malloc_trim`` brought it back to
    0.6 (``jax.clear_caches`` freed 0.1); over the whole suite workers grew to 6-7 GiB each.
    """
    yield
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def seed_of(nodeid: str) -> int:
    """The seed of a test's own generator: CRC-32 of its node id (stable across runs, machines
    and Python's hash randomisation)."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _own_module_rng(request, monkeypatch):
    """Give each test its own ``RNG``: a test module's global ``RNG`` (a NumPy ``Generator``)
    is replaced, for the test, by ``np.random.default_rng(seed_of(nodeid))``.

    Without it, the tests of a module drew from one shared generator in the order they ran, so
    a test's inputs depended on which tests ran before it in its worker (``--dist worksteal``
    moves tests between workers from run to run), and a failure seen in the full suite could
    not be reproduced by running the test alone. The module's constants drawn from ``RNG`` at
    import (``X = RNG.normal(...)``) are unchanged; helpers that draw from ``RNG`` at call time
    draw from the test's generator.
    """
    module = getattr(request, "module", None)
    if isinstance(getattr(module, "RNG", None), np.random.Generator):
        monkeypatch.setattr(module, "RNG", np.random.default_rng(seed_of(request.node.nodeid)))


@pytest.fixture
def x64():
    """Run a test in float64 (for jax.test_util.check_grads' finite differences)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def jit_options(monkeypatch):
    """The ``compiler_options`` of every ``jax.jit`` call made while the test runs (a copy of
    each, None where none were given), in call order; ``jax.jit`` itself still does the work."""
    seen, jit = [], jax.jit

    def spy(fun, *args, **kwargs):
        options = kwargs.get("compiler_options")
        seen.append(None if options is None else dict(options))
        return jit(fun, *args, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    return seen
