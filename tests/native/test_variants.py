"""Every kernel variant this CPU can run passes the checks against PyTorch, not only the one
the suite loads (the host's best).

The suite itself runs on the host's variant. Here the same tests of
``tests/functional/test_sampling.py`` (bilinear on the native kernel, the one-channel fast path)
and, for another instruction set, of ``tests/functional/test_native_attention.py`` (against
torch's SDPA) run again in a subprocess per other variant: the 8-lane AVX2
library (``ATTENTION_JAX_NATIVE_ISA=avx2``, compiled once into a private cache) on an AVX-512
machine, and on AVX-512 the tap fetch this CPU does not pick by itself
(``ATTENTION_JAX_NATIVE_GATHER``: gathers on AMD, the staging buffer on Intel).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attention_jax import _native

REPO = Path(__file__).resolve().parents[2]
SELECT = "one_channel_fast_path or (matches_torch_forward_and_grads and native-1)"


def _other_variants() -> list[tuple[str, dict]]:
    host = _native.host_isa()
    out = []
    if host == "avx512":
        intel = "GenuineIntel" in Path("/proc/cpuinfo").read_text()
        out.append(("avx512-" + ("staging" if intel else "gather"),
                    {"ATTENTION_JAX_NATIVE_GATHER": "0" if intel else "1"}))
    if host in ("avx512", "avx2"):
        out.append(("avx2" if host == "avx512" else "generic",
                    {"ATTENTION_JAX_NATIVE_ISA": "avx2" if host == "avx512" else "generic"}))
    return out


def test_this_cpu_has_other_variants_to_check():
    """The suite runs on x86-64 machines with AVX2 at least (CI's too)."""
    assert _other_variants(), f"host variant {_native.host_isa()}"


@pytest.mark.parametrize("name,env", _other_variants(), ids=[n for n, _ in _other_variants()])
def test_variant_matches_torch(name, env, tmp_path):
    isa = env.get("ATTENTION_JAX_NATIVE_ISA")
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    if isa:  # a library of its own, built once here (the shared cache is left alone)
        full["ATTENTION_JAX_CACHE"] = str(tmp_path / "cache")
    probe = subprocess.run([sys.executable, "-m", "attention_jax._native"], env=full,
                           capture_output=True, text=True, timeout=600, cwd=REPO)
    assert probe.returncode == 0, probe.stderr
    assert f"; {isa or 'avx512'})" in probe.stdout, probe.stdout
    files = ["tests/functional/test_sampling.py"]
    select = SELECT
    if isa == "avx2":  # a library of its own: the attention kernel's 8-lane micro-kernel too
        files.append("tests/functional/test_native_attention.py")
        select += " or matches_torch_sdpa or built_where"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                        "no:cacheprovider", *files, "-k", select],
                       env=full, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stdout[-4000:]
    assert " passed" in p.stdout and "failed" not in p.stdout, p.stdout[-2000:]
