"""The GPU/TPU path proven by lowering, and the supported way to export for the CPU.

* Every registered mechanism (linen; nnx for one), ``grid_sample`` and ``attention``, forward
  and forward+backward, exports for ``cuda`` and ``tpu`` with ``jax.export`` and no CPU custom
  call in the lowering (``jax.lax.platform_dependent`` keeps the native kernels in the CPU
  branch). Shapes only (``jax.ShapeDtypeStruct`` / ``jax.eval_shape``): nothing is computed.
* ``jax.export`` for the CPU refuses the native kernels' custom calls (no compatibility
  guarantee); inside ``attention_jax.native_disabled()`` (or with ``implementation="xla"``)
  the export succeeds, runs (``exported.call``, also after a serialisation round trip) and
  matches the native result.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax import _native
from attention_jax import functional as F
from tests.parity import assert_close

C = 16
X = jax.ShapeDtypeStruct((2, 8, 8, C), jnp.float32)
ACCELERATORS = ["cuda", "tpu"]
NATIVE_TARGETS = tuple(_native._TARGETS)


def _targets(exported: jax.export.Exported) -> set[str]:
    text = exported.mlir_module()
    return set(re.findall(r'stablehlo\.custom_call @([\w.$-]+)', text)) | set(
        re.findall(r'call_target_name = "([^"]+)"', text))


def _check_accelerators(f, *args) -> None:
    exp = jax.export.export(jax.jit(f), platforms=ACCELERATORS)(*args)
    assert exp.platforms == tuple(ACCELERATORS)
    targets = _targets(exp)
    assert not {t for t in targets if t.startswith("attention_jax") or t in NATIVE_TARGETS}, (
        targets)
    assert not {t for t in targets if re.match(r"(lapack|ducc|cpu)_", t)}, targets


def _fwd_and_bwd(apply):
    """apply(params, x) -> (forward, forward+backward w.r.t. params and x)."""
    loss = lambda p, x: jnp.sum(jnp.square(apply(p, x)))
    return apply, jax.value_and_grad(loss, argnums=(0, 1))


@pytest.mark.parametrize("name", aj.list_attention())
def test_mechanism_lowers_for_gpu_and_tpu(name):
    m = aj.create_attention(name, C)
    variables = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), X)
    for f in _fwd_and_bwd(lambda v, x: m.apply(v, x)):
        _check_accelerators(f, variables, X)


def test_nnx_mechanism_lowers_for_gpu_and_tpu():
    m = nnx.eval_shape(lambda: aj.create_attention("stn", C, api="nnx", rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(m)
    for f in _fwd_and_bwd(lambda s, x: nnx.merge(graphdef, s)(x)):
        _check_accelerators(f, state, X)


# Shapes where "auto" takes the native kernels on the CPU (checked below), so the lowering
# for the accelerators really has a CPU branch to leave out.
GS = (jax.ShapeDtypeStruct((2, 9, 9, 3), jnp.float32),
      jax.ShapeDtypeStruct((2, 5, 7, 2), jnp.float32))
ATT = jax.ShapeDtypeStruct((32, 1024, 16), jnp.float32)  # 2**25 scores: above the threshold


def _gs(x, g):
    return F.grid_sample(x, g)


def _att(q, k, v):
    return F.attention(q, k, v)


@pytest.mark.parametrize("fn,args,kernel", [(_gs, GS, "grid_sample"),
                                            (_att, (ATT,) * 3, "attention")])
def test_functional_lowers_for_gpu_and_tpu(fn, args, kernel):
    loss = lambda *a: jnp.sum(jnp.square(fn(*a)))
    grad = jax.value_and_grad(loss, argnums=tuple(range(len(args))))
    for f in (fn, grad):
        cpu = jax.jit(f).lower(*args).as_text()
        assert any(t in cpu for t in NATIVE_TARGETS), f"{kernel}: no native call on the CPU"
        _check_accelerators(f, *args)


# ---------------------------------------------------------------------------- CPU export


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
    g = jnp.asarray(rng.uniform(-1.2, 1.2, size=(2, 5, 7, 2)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(17, 1024, 8)), jnp.float32)  # 2**24 + 2**20 scores
    return x, g, q


def _model(x, g, q):
    """Both kernels, forward and backward, in one function."""
    def loss(x, g, q):
        return jnp.sum(F.grid_sample(x, g) ** 2) + jnp.sum(F.attention(q, q, q) ** 2)
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, g, q)


def test_cpu_export_needs_native_disabled_then_runs_and_matches():
    args = _inputs()
    assert any(t in jax.jit(_model).lower(*args).as_text() for t in NATIVE_TARGETS)
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility"):
        jax.export.export(jax.jit(_model), platforms=["cpu"])(*args)
    want = jax.jit(_model)(*args)  # the native kernels
    with aj.native_disabled():
        exp = jax.export.export(jax.jit(_model), platforms=["cpu"])(*args)
        assert not _targets(exp) & set(NATIVE_TARGETS)
        assert _native.status().endswith("inside attention_jax.native_disabled()")
    assert _native.usable("grid_sample")  # the context ends with the block
    got = jax.export.deserialize(exp.serialize()).call(*args)  # as a user would ship it
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(a, b, rtol=1e-4, what="exported (pure JAX) vs native")


def test_native_disabled_retraces_a_jitted_function_and_refuses_native():
    x, g, q = _inputs()
    f = jax.jit(lambda x, g: F.grid_sample(x, g))
    native = _native.target("fwd", "float32")
    assert native in f.lower(x, g).as_text()
    y = f(x, g)  # traced and cached with the kernel
    with aj.native_disabled():
        assert native not in f.lower(x, g).as_text()  # traced again, not the cached trace
        assert_close(f(x, g), y)
        with pytest.raises(ValueError, match="native_disabled"):
            F.grid_sample(x, g, implementation="native")
        with pytest.raises(ValueError, match="native_disabled"):
            F.attention(q, q, q, implementation="native")
    assert native in f.lower(x, g).as_text()


def test_cpu_export_with_implementation_xla():
    x, g, _ = _inputs()
    f = lambda x, g: F.grid_sample(x, g, implementation="xla")
    exp = jax.export.export(jax.jit(f), platforms=["cpu"])(x, g)
    assert_close(exp.call(x, g), F.grid_sample(x, g, implementation="native"))
