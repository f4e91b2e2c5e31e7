"""Registry contract: every registered mechanism, built by name, behaves as the family promises."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax.torch_reference.registry import REFERENCES
from tests.parity import check_linen_equals_nnx, check_module_parity

NAMES = aj.list_attention()
C = 32
X = np.random.default_rng(0).normal(size=(2, 9, 9, C)).astype(np.float32)


def test_registry_not_empty_and_errors():
    assert "se" in NAMES
    with pytest.raises(ValueError, match=r"get_attention_class: name must be one of 'bam'|'se'"):
        aj.create_attention("nope", C)
    with pytest.raises(ValueError, match=r"get_attention_class: api must be one of 'linen', 'nnx'"):
        aj.create_attention("se", C, api="torch")
    with pytest.raises(ValueError, match=r"create_attention: rngs must be given for api='nnx'"):
        aj.create_attention("se", C, api="nnx")


@pytest.mark.parametrize("name", NAMES)
def test_shared_knobs_one_default(name):
    """Wherever a mechanism has a shared knob, linen and nnx give it the family's default."""
    lin = aj.get_attention_class(name, api="linen")
    nn_cls = aj.get_attention_class(name, api="nnx")
    lin_fields = {f: getattr(lin, f) for f in lin.__dataclass_fields__
                  if f not in ("parent", "name") and hasattr(lin, f)}
    nnx_params = {k: p.default for k, p in inspect.signature(nn_cls.__init__).parameters.items()
                  if p.default is not inspect.Parameter.empty}
    for knob, default in aj.SHARED_DEFAULTS.items():
        if knob in lin_fields or knob in nnx_params:
            assert knob in lin_fields and knob in nnx_params, (name, knob)
            assert lin_fields[knob] == default, (name, knob, lin_fields[knob])
            assert nnx_params[knob] == default, (name, knob, nnx_params[knob])
    # Every other option too: linen and nnx agree on defaults.
    for k, v in nnx_params.items():
        if k in lin_fields:
            assert lin_fields[k] == v, (name, k, lin_fields[k], v)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_built_by_name_preserves_shape_and_dtype(name, dtype):
    m = aj.create_attention(name, C)
    x = jnp.asarray(X, dtype)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.shape == x.shape and y.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("name", NAMES)
def test_default_reference_parity_and_nnx(name):
    """Defaults built by name agree with the torch reference and with the nnx twin."""
    m = aj.create_attention(name, C)
    v = check_module_parity(m, REFERENCES[name](C), X, rtol=1e-4, atol_rel=1e-5)
    n = aj.create_attention(name, C, api="nnx", rngs=nnx.Rngs(3))
    check_linen_equals_nnx(m, n, jnp.asarray(X), v, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_jit_compiles_once(name):
    m = aj.create_attention(name, C)
    v = m.init(jax.random.key(0), X)
    traces = []

    @jax.jit
    def f(v, x):
        traces.append(1)
        return m.apply(v, x)

    f(v, X)
    f(v, X + 1.0)
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_jit_grad_wrt_input_and_params(name):
    """Reverse mode under jit works for every mechanism (the benchmark's forward+backward)."""
    m = aj.create_attention(name, C)
    v = m.init(jax.random.key(0), X)
    loss = lambda p, x: jnp.sum(m.apply({**v, "params": p}, x) ** 2)
    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], X)
    assert gx.shape == X.shape and bool(jnp.all(jnp.isfinite(gx)))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(gp))
