"""Registry contract: every registered mechanism, built by name, behaves as the family promises."""

import inspect
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax.torch_reference.registry import REFERENCES
from tests.parity import (
    check_linen_equals_nnx,
    check_module_parity,
    perturb_params,
    randomize_batch_stats,
)

NAMES = aj.list_attention()
C = 32
X = np.random.default_rng(0).normal(size=(2, 9, 9, C)).astype(np.float32)
# A channel count where the width rules matter: C / 16 = 12.5 rounds to 16 (timm; rounding
# down would give 8), and ECA's adaptive kernel is 5, not 3.
C_ROUND = 200
X_ROUND = np.random.default_rng(1).normal(size=(2, 9, 9, C_ROUND)).astype(np.float32)


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


# Biases whose gradient is zero in exact arithmetic: each adds one constant to every logit of
# a softmax row (q . (k_j + b) = q . k_j + q . b), so only rounding noise is left to compare.
ZERO_GRADS = {"pam": ("key.bias",), "cca": ("key.bias",), "danet": ("sa.key.bias",),
              "nl": ("phi.bias",)}


@pytest.mark.parametrize("c", [C, C_ROUND])
@pytest.mark.parametrize("name", NAMES)
def test_default_reference_parity_and_nnx(name, c):
    """Defaults built by name agree with the torch reference and with the nnx twin.

    Every parameter is moved off its initialisation first (several mechanisms are the
    identity at init) and the running statistics are random.
    """
    x = X if c == C else X_ROUND
    m = aj.create_attention(name, c)
    k_init, k_stats, k_perturb = jax.random.split(jax.random.key(0), 3)
    v = randomize_batch_stats(dict(jax.jit(m.init)(k_init, x)), k_stats)
    v = perturb_params(v, k_perturb)
    check_module_parity(m, REFERENCES[name](c), x, variables=v, rtol=1e-4, atol_rel=1e-5,
                        zero_grads=ZERO_GRADS.get(name, ()))
    n = aj.create_attention(name, c, api="nnx", rngs=nnx.Rngs(3))
    check_linen_equals_nnx(m, n, jnp.asarray(x), v, atol=1e-5)


# name -> (path to a parameter, its shape) at C = 200, worked out by hand from the papers'
# and timm's width rules (make_divisible(200 / 16, 8) = 16 for the SE-style bottlenecks),
# not from the library: a wrong width rule fails here even if the references share it.
WIDTHS_200 = {
    "se": (("fc1", "kernel"), (1, 1, 200, 16)),
    "eca": (("conv", "kernel"), (5, 1, 1)),  # t = int((log2(200) + 1) / 2) = 4 -> k = 5
    "cbam": (("channel", "fc1", "kernel"), (1, 1, 200, 16)),
    "bam": (("fc1", "kernel"), (200, 16)),
    "ge": (("fc1", "kernel"), (1, 1, 200, 16)),
    "gc": (("add_fc1", "kernel"), (1, 1, 200, 16)),
    "soca": (("fc1", "kernel"), (1, 1, 200, 16)),
    "ca": (("conv1", "kernel"), (1, 1, 200, 16)),
    "pfa": (("ca_fc1", "kernel"), (1, 1, 200, 16)),
    "sk": (("fc_reduce", "kernel"), (1, 1, 200, 32)),  # max(16, L = 32)
    "splat": (("fc1", "kernel"), (1, 1, 200, 32)),  # max(make_divisible(400 / 16) = 24, 32)
    "nl": (("theta", "kernel"), (1, 1, 200, 100)),  # C / 2
    "pam": (("query", "kernel"), (1, 1, 200, 25)),  # C / 8
    "cca": (("query", "kernel"), (1, 1, 200, 25)),
    "cam": (("gamma",), (1,)),
    "danet": (("conv5a", "conv", "kernel"), (3, 3, 200, 50)),  # C / 4
    "mhsa2d": (("qkv", "kernel"), (200, 600)),
    "aspp": (("b0", "conv", "kernel"), (1, 1, 200, 200)),
    "stn": (("loc", "fc2", "kernel"), (32, 6)),
}


def test_widths_table_covers_the_registry():
    assert set(WIDTHS_200) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_widths_at_200(name):
    path, shape = WIDTHS_200[name]
    m = aj.create_attention(name, C_ROUND)
    params = jax.eval_shape(m.init, jax.random.key(0), X_ROUND[:1])["params"]
    for key in path:
        params = params[key]
    assert params.shape == shape
    n = aj.create_attention(name, C_ROUND, api="nnx", rngs=nnx.Rngs(0))
    leaf = nnx.to_pure_dict(nnx.state(n, nnx.Param))
    for key in path:
        leaf = leaf[key]
    assert leaf.shape == shape


@pytest.mark.parametrize("channels", [0, -4, 16.0, True])
@pytest.mark.parametrize("name", NAMES)
def test_bad_channels_rejected_by_every_module(name, channels):
    """``channels`` must be an integer >= 1, in both APIs (a ValueError naming the class)."""
    cls = aj.get_attention_class(name).__name__
    msg = rf"{cls}: channels must be an integer >= 1, got {re.escape(repr(channels))}(\n|$)"
    with pytest.raises(ValueError, match=msg):
        aj.create_attention(name, channels, api="nnx", rngs=nnx.Rngs(0))
    m = aj.create_attention(name, channels)
    with pytest.raises(ValueError, match=msg):
        m.init(jax.random.key(0), jnp.ones((1, 9, 9, 16)))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_output(name):
    """A batch of 0 gives an empty (0, H, W, C) output in both APIs, not an exception."""
    m = aj.create_attention(name, C)
    v = m.init(jax.random.key(0), X[:1])
    empty = jnp.zeros((0, *X.shape[1:]), jnp.float32)
    assert m.apply(v, empty).shape == empty.shape
    n = aj.create_attention(name, C, api="nnx", rngs=nnx.Rngs(0))
    n.eval()
    assert n(empty).shape == empty.shape


@pytest.mark.parametrize("name", NAMES)
def test_empty_map_gives_empty_output(name):
    """H = 0 gives an empty output too (cam, danet and cbam raised raw errors), except for the
    spatial transformer, whose localisation net cannot pool nothing: a ValueError naming it.
    A training step on an empty batch leaves the running statistics as they were (Flax's
    BatchNorm averaged NaN into them). Found by tests/test_properties.py."""
    m = aj.create_attention(name, C)
    v = m.init(jax.random.key(0), X[:1])
    n = aj.create_attention(name, C, api="nnx", rngs=nnx.Rngs(0))
    n.eval()
    empty = jnp.zeros((2, 0, *X.shape[2:]), jnp.float32)
    if name == "stn":
        for call in (lambda: m.apply(v, empty), lambda: n(empty)):
            with pytest.raises(ValueError, match=r"SpatialTransformer: x must be H, W >= 1"):
                call()
    else:
        assert m.apply(v, empty).shape == empty.shape
        assert n(empty).shape == empty.shape
    if "batch_stats" in v:
        _, upd = m.apply(v, X[:0], train=True, mutable=["batch_stats"])
        chex.assert_trees_all_equal(upd["batch_stats"], v["batch_stats"])
        n.train()
        stats = lambda: jax.tree_util.tree_map(  # noqa: E731
            np.array, nnx.to_pure_dict(nnx.state(n, nnx.BatchStat)))
        before = stats()
        n(jnp.asarray(X[:0]))
        chex.assert_trees_all_equal(stats(), before)


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
