"""The XLA:CPU code generator the test suite compiles with, and how to leave it.

Most of the suite's time is XLA compiling small programs (about 26,000 compiles in a run, each
jitted function and, op by op, each new primitive and shape), not running them. XLA's default
code generator spends most of a small compile in LLVM's optimisation pipeline and in the MLIR
fusion emitters; two flags take it to the LLVM-unoptimised, classic elemental emitter, and the
whole suite from 1,224 s of pytest to 663 s (same checkout, 2-core AMD EPYC VM, 2026-12-01):

* ``--xla_backend_optimization_level=0``: LLVM at -O0 (no vectorisation, no inlining);
* ``--xla_cpu_use_fusion_emitters=false``: fusions through XLA's elemental IR emitter.

Both are XLA's own, supported code paths, and neither is a fast-math setting. The machine code
is still not what users run, so ``tests/test_codegen.py`` runs ``tests/codegen_probe.py``
(forward and every gradient of each registered mechanism, ``grid_sample``, ``attention`` and a
small ResNet with grouped convolutions) under both code generators and compares the numbers
(they agreed to 8.2e-7 of each array's largest value), and the notebooks run with the default
one.

``ATTENTION_JAX_TEST_CODEGEN=default`` runs the whole suite with XLA's defaults (and the user's
``XLA_FLAGS`` untouched); ``fast`` (the default) adds the two flags to ``XLA_FLAGS``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

FAST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
CHOICES = ("fast", "default")


def choice(environ: Mapping[str, str] = os.environ) -> str:
    """``ATTENTION_JAX_TEST_CODEGEN``: ``"fast"`` (unset) or ``"default"``."""
    value = environ.get("ATTENTION_JAX_TEST_CODEGEN", "fast")
    if value not in CHOICES:
        raise ValueError(f"ATTENTION_JAX_TEST_CODEGEN must be one of {CHOICES}, got {value!r}")
    return value


def with_fast_flags(xla_flags: str) -> str:
    """``xla_flags`` plus the fast code generator's flags (the caller's own flags kept first)."""
    present = xla_flags.split()
    return " ".join([*present, *(f for f in FAST_FLAGS if f not in present)])


def without_fast_flags(xla_flags: str) -> str:
    """``xla_flags`` with the fast code generator's flags taken out (the caller's own kept)."""
    return " ".join(f for f in xla_flags.split() if f not in FAST_FLAGS)


def default_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of ``environ`` for a subprocess that must compile with XLA's default code
    generator: the fast flags removed from ``XLA_FLAGS``, the suite's choice set to default."""
    env = dict(environ)
    env["XLA_FLAGS"] = without_fast_flags(env.get("XLA_FLAGS", ""))
    env["ATTENTION_JAX_TEST_CODEGEN"] = "default"
    return env


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``XLA_FLAGS`` for this process (and the subprocesses it starts) from the choice.

    Must run before JAX creates its CPU backend (``XLA_FLAGS`` is read then): the top of
    ``tests/conftest.py``. Returns the choice.
    """
    value = choice(environ)
    if value == "fast":
        environ["XLA_FLAGS"] = with_fast_flags(environ.get("XLA_FLAGS", ""))
    return value
