"""The suite compiles with a fast XLA:CPU code generator (``tests/codegen.py``); this file proves
that the numbers it checks are the numbers XLA's default code generator gives users."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import codegen, codegen_probe

ROOT = Path(__file__).resolve().parents[1]


def test_flags_are_added_and_removed_keeping_the_callers_own():
    mine = "--xla_force_host_platform_device_count=4"
    fast = codegen.with_fast_flags(mine)
    assert fast.split() == [mine, *codegen.FAST_FLAGS]
    assert codegen.with_fast_flags(fast) == fast
    assert codegen.without_fast_flags(fast) == mine
    assert codegen.without_fast_flags("") == ""
    env = codegen.default_env({"XLA_FLAGS": fast, "PATH": "/bin"})
    assert env == {"XLA_FLAGS": mine, "PATH": "/bin", "ATTENTION_JAX_TEST_CODEGEN": "default"}


def test_choice_is_checked():
    assert codegen.choice({}) == "fast"
    assert codegen.choice({"ATTENTION_JAX_TEST_CODEGEN": "default"}) == "default"
    with pytest.raises(ValueError, match=r"ATTENTION_JAX_TEST_CODEGEN must be one of"):
        codegen.choice({"ATTENTION_JAX_TEST_CODEGEN": "O0"})


def test_apply_sets_this_process_flags():
    env = {"XLA_FLAGS": "--a"}
    assert codegen.apply(env) == "fast" and env["XLA_FLAGS"].split() == ["--a", *codegen.FAST_FLAGS]
    env = {"XLA_FLAGS": "--a", "ATTENTION_JAX_TEST_CODEGEN": "default"}
    assert codegen.apply(env) == "default" and env["XLA_FLAGS"] == "--a"
    # And conftest applied it to this run, before JAX created its backend.
    flags = os.environ.get("XLA_FLAGS", "").split()
    if codegen.choice() == "fast":
        assert set(codegen.FAST_FLAGS) <= set(flags)
    else:
        assert not set(codegen.FAST_FLAGS) & set(flags)


def test_default_code_generator_gives_the_same_numbers(tmp_path):
    """Every registered mechanism, grid_sample, attention and a small ResNet, forward and every
    gradient: XLA's default code generator (a subprocess) against this run's.

    Tolerance: 2e-6 of the largest magnitude among the case's outputs (forward) or gradients,
    about 16 float32 ulps of it. Measured on the 2-core AMD EPYC (Zen 5) VM: at most 8.2e-7 of
    an array's own largest value, except for gradients that are zero in exact arithmetic (a key
    projection's bias, see tests/test_registry.py's ZERO_GRADS), whose rounding noise is only
    bounded relative to the other gradients.
    """
    out = tmp_path / "default.npz"
    proc = subprocess.run([sys.executable, "-m", "tests.codegen_probe", str(out)], cwd=ROOT,
                          env=codegen.default_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    default = np.load(out)
    ours = codegen_probe.run()
    assert sorted(default.files) == sorted(ours)
    cases = sorted({k.split("/")[0] for k in ours})
    assert len(cases) >= 20, cases
    for case in cases:
        for kind in ("y", "grad"):
            keys = [k for k in ours
                    if k.startswith(case + "/") and k.split("/")[1].startswith(kind)]
            assert keys, (case, kind)
            scale = max(float(np.abs(default[k]).max(initial=0.0)) for k in keys)
            for k in keys:
                assert np.isfinite(ours[k]).all() and np.isfinite(default[k]).all(), k
                np.testing.assert_allclose(ours[k], default[k], rtol=0, atol=2e-6 * scale,
                                           err_msg=k)
