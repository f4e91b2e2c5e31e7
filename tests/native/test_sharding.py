"""Data parallel: the native kernels under a batch-sharded ``jit`` on 4 (forced) CPU devices.

Each device must run the kernel on its own quarter of the batch: the outputs stay sharded over
the batch, the compiled program gathers no input (no all-gather) and calls the kernel on local
shapes, and the values equal the single-device result; forward and backward, grid_sample and
attention. A subprocess, since the device count is fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = textwrap.dedent("""
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from attention_jax import _native, functional as F

    assert len(jax.devices()) == 4, jax.devices()
    assert _native.available(), _native.status()
    # Auto axes: the usual data-parallel jit (shardings on the arguments, GSPMD/Shardy decides
    # the rest). (With explicit axes the pure-JAX grid_sample's gather needs an out_sharding,
    # so "auto", which traces both branches, is checked here with auto axes.)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)

    def report(name, fn, args, targets):
        sharded = [jax.device_put(a, batch) for a in args]
        local = [jax.device_put(a, jax.devices()[0]) for a in args]
        jitted = jax.jit(fn)
        hlo = jitted.lower(*sharded).compile().as_text()
        got = jitted(*sharded)
        want = jax.jit(fn)(*local)
        leaves, ref = jax.tree.leaves(got), jax.tree.leaves(want)
        calls = [line for line in hlo.splitlines() if "custom_call_target" in line
                 and any(t in line for t in targets)]
        return {
            "name": name,
            "gathers": [l.strip()[:160] for l in hlo.splitlines()
                        if re.search(r"all-gather|all-to-all|collective-permute", l)],
            "calls": [re.findall(r"f32\\[[0-9,]*\\]", l)[:2] for l in calls],
            "sharded": [l.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), l.ndim)
                        for l in leaves],
            "max_err": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                           for a, b in zip(leaves, ref)),
            "scale": max(float(np.max(np.abs(np.asarray(b)))) for b in ref),
        }

    out = []
    x, g = arr(8, 12, 12, 3), jnp.tanh(arr(8, 10, 10, 2)) * 1.2
    gs = lambda x, g: F.grid_sample(x, g, implementation="native")
    cot = arr(8, 10, 10, 3)
    out.append(report("grid_sample fwd", gs, (x, g), [_native.target("fwd", "float32")]))
    out.append(report("grid_sample bwd",
                      jax.grad(lambda x, g: jnp.sum(gs(x, g) * cot), argnums=(0, 1)), (x, g),
                      [_native.target("bwd", "float32")]))
    q, k, v = arr(8, 2, 40, 16), arr(8, 2, 70, 16), arr(8, 2, 70, 8)
    at = lambda q, k, v: F.attention(q, k, v, implementation="native")
    acot = arr(8, 2, 40, 8)
    out.append(report("attention fwd", at, (q, k, v), [_native.attention_target("fwd")]))
    out.append(report("attention bwd",
                      jax.grad(lambda q, k, v: jnp.sum(at(q, k, v) * acot), argnums=(0, 1, 2)),
                      (q, k, v), [_native.attention_target("bwd")]))
    # "auto" picks the kernel on the CPU and is partitioned the same way.
    out.append(report("grid_sample auto", lambda x, g: F.grid_sample(x, g), (x, g),
                      [_native.target("fwd", "float32")]))
    print(json.dumps(out))
""")


def test_native_kernels_partition_over_the_batch():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(REPO)}
    env.pop("ATTENTION_JAX_NATIVE", None)
    p = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.splitlines()[-1])
    local_batch = {"grid_sample": "f32[2,", "attention": "f32[4,"}  # 8 / 4; 8 * 2 heads / 4
    for r in results:
        assert r["gathers"] == [], r
        assert r["calls"], f"{r['name']}: the kernel is not in the compiled program"
        want = local_batch[r["name"].split()[0]]
        # Every kernel call works on one device's shard: its operands' batch is 1/4.
        assert all(shapes and all(s.startswith(want) for s in shapes) for shapes in r["calls"]), r
        assert all(r["sharded"]), r
        assert r["max_err"] <= 1e-6 * max(1.0, r["scale"]), r
