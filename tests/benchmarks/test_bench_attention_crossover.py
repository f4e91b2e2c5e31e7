"""``benchmarks/bench_attention_crossover.py``: the route it reports is the one
``attention(implementation="auto")`` compiles to on each side of the CPU thresholds, and its
ratios are the medians' quotients (a smoke run: tiny shapes, two repeats)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from attention_jax.functional import scoring as S
from benchmarks import bench_attention_crossover as bac


def test_routes_follow_the_thresholds():
    # 64 tokens: 4,096 elements (direct); 256 tokens: 2**16 (the kernel both ways);
    # (8, 2, 256): 2**20, between CPU_DIRECT_FORWARD_MIN and CPU_NATIVE_THRESHOLD.
    assert 64 * 64 < S.CPU_NATIVE_GRAD_THRESHOLD == 256 * 256
    assert S.CPU_DIRECT_FORWARD_MIN < 8 * 2 * 256 * 256 <= S.CPU_NATIVE_THRESHOLD
    assert bac.auto_route((1, 1, 64, 16)) == "direct"
    assert bac.auto_route((1, 1, 256, 16)) == "native"
    assert bac.auto_route((8, 2, 256, 16)) == "direct fwd, native grad"


def test_smoke_run_reports_consistent_ratios(tmp_path):
    out = tmp_path / "crossover.json"
    rows = bac.main(["--shapes", "1x1x64x16,1x2x128x8", "--repeats", "2", "--min-repeat-s", "0",
                     "--json", str(out)])
    assert [r["shape"] for r in rows] == [[1, 1, 64, 16], [1, 2, 128, 8]]
    for r in rows:
        assert r["elements"] == r["shape"][0] * r["shape"][1] * r["shape"][2] ** 2
        for mode in ("fwd", "f+b"):
            native, direct = r[f"native {mode} s"], r[f"direct {mode} s"]
            assert native > 0 and direct > 0
            assert np.isclose(r[f"ratio {mode}"], native / direct)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["cpu"]["model_name"]
    # JAX's CPU backend runs in this process already: the default mode is kept, said as such.
    assert saved["cpu_dispatch"] == {"requested": "async", "effective": True}


@pytest.mark.parametrize("text", ["1x1x64", "1x0x64x16", "axbxcxd"])
def test_bad_shapes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="BxHxTxD"):
        bac._shape(text)
