"""One MLIR context shared by many lowerings: the suite's second compile-time saving.

JAX lowers every program it compiles (each jitted function and, op by op, each new primitive
and shape) to StableHLO in a new MLIR context (``jax._src.interpreters.mlir.make_ir_context``):
the context loads and registers its dialects afresh, and re-creates every type and attribute
the program uses, for each of the suite's ~26,000 lowerings. A context can be reused (MLIR's
own advice for many independent modules, llvm/llvm-project#217320; elixir-nx/nx#1454 made
theirs a singleton); the one reason not to keep a single one for ever is that it keeps every
type, attribute and location it ever created. So ``install()`` replaces JAX's factory with one
that hands out the same context to ``EVERY`` lowerings, then starts a new one.

Measured (2-core AMD EPYC VM, 2026-12-01, the same checkout, fast code generator, ``-n 2``):
the whole suite from 695 s to 548 s of pytest, with the largest process at 3.6 GiB resident;
sharing each context among 100, 500 or 2,000 lowerings made no difference to the time (131 s
for each on a quarter of the suite), so the smallest bound is kept.

The lowered program is the same text either way (``tests/test_lowering.py`` compares the
StableHLO of every registered mechanism's forward and gradient lowered both ways), and only
the test suite does this: users' processes, and the subprocesses the tests start (the
notebooks, the examples, the command line), lower as JAX does.

``ATTENTION_JAX_TEST_MLIR_CONTEXT=fresh`` turns it off (``shared``, the default, keeps it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jax._src.interpreters import mlir

EVERY = 100
"""Lowerings that share one context before the next one starts."""

CHOICES = ("shared", "fresh")

_jax_factory: Callable[[], Any] = mlir.make_ir_context
_lock = threading.Lock()
_state: dict[str, Any] = {"context": None, "uses": 0, "contexts": 0}


def choice(environ: Mapping[str, str] = os.environ) -> str:
    """``ATTENTION_JAX_TEST_MLIR_CONTEXT``: ``"shared"`` (unset) or ``"fresh"``."""
    value = environ.get("ATTENTION_JAX_TEST_MLIR_CONTEXT", "shared")
    if value not in CHOICES:
        raise ValueError(f"ATTENTION_JAX_TEST_MLIR_CONTEXT must be one of {CHOICES}, "
                         f"got {value!r}")
    return value


def shared_context() -> Any:
    """The context for the next lowering: the current one until ``EVERY`` lowerings used it."""
    with _lock:
        if _state["context"] is None or _state["uses"] >= EVERY:
            _state["context"] = _jax_factory()
            _state["uses"] = 0
            _state["contexts"] += 1
        _state["uses"] += 1
        return _state["context"]


def contexts_made() -> int:
    """How many contexts ``shared_context`` has created in this process."""
    return _state["contexts"]


def installed() -> bool:
    """Whether JAX's lowering currently takes its contexts from ``shared_context``."""
    return mlir.make_ir_context is shared_context


def install(environ: Mapping[str, str] = os.environ) -> str:
    """Make JAX's lowerings share contexts, unless the environment says ``fresh``.

    JAX looks ``make_ir_context`` up in its module at each lowering, so replacing the module's
    attribute is enough. Returns the choice.
    """
    value = choice(environ)
    if value == "shared":
        mlir.make_ir_context = shared_context
    return value


@contextlib.contextmanager
def fresh() -> Iterator[None]:
    """Within the block, every lowering gets a new context (JAX's own behaviour)."""
    saved = mlir.make_ir_context
    mlir.make_ir_context = _jax_factory
    try:
        yield
    finally:
        mlir.make_ir_context = saved
