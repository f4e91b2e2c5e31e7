"""Pure PFANet functions: context-aware pyramid, spatial map, saliency head (explicit weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import functional as F
from tests.gradcheck import check_grads
from tests.parity import assert_close

RNG = np.random.default_rng(0)


def _conv(w, dilation=1):
    kh, kw = w.shape[:2]
    pad = [(dilation * (kh // 2),) * 2, (dilation * (kw // 2),) * 2]
    return lambda t: jax.lax.conv_general_dilated(
        t, w, (1, 1), pad, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _weights(dtype=np.float64):
    r = np.random.default_rng(1)

    def w(*shape):
        return jnp.asarray(r.normal(size=shape) * 0.4, dtype)

    return {"p0": w(1, 1, 3, 2), "p1": w(3, 3, 3, 2), "a1": w(1, 3, 4, 2), "a2": w(3, 1, 2, 1),
            "b1": w(3, 1, 4, 2), "b2": w(1, 3, 2, 1)}


def _cpfe(x, p0, p1):
    return F.context_aware_pyramid(x, convs=[_conv(p0), _conv(p1, 2)], act="silu")


def _smap(x, a1, a2, b1, b2):
    return F.pyramid_spatial_map(x, branches=[[(_conv(a1), None), (_conv(a2), None)],
                                              [(_conv(b1), None), (_conv(b2), None)]],
                                 act="silu")


def test_cpfe_is_concat_of_branches():
    w = _weights(np.float32)
    x = jnp.asarray(RNG.normal(size=(2, 6, 6, 3)), jnp.float32)
    want = jax.nn.silu(jnp.concatenate([_conv(w["p0"])(x), _conv(w["p1"], 2)(x)], -1))
    assert_close(_cpfe(x, w["p0"], w["p1"]), want)


def test_spatial_map_formula_and_range():
    w = _weights(np.float32)
    x = jnp.asarray(RNG.normal(size=(2, 5, 7, 4)), jnp.float32)
    a = jax.nn.silu(_conv(w["a2"])(jax.nn.silu(_conv(w["a1"])(x))))
    b = jax.nn.silu(_conv(w["b2"])(jax.nn.silu(_conv(w["b1"])(x))))
    m = _smap(x, w["a1"], w["a2"], w["b1"], w["b2"])
    assert m.shape == (2, 5, 7, 1)
    assert_close(m, jax.nn.sigmoid(a + b))


def test_grads(x64):
    w = _weights()
    x = jnp.asarray(RNG.normal(size=(1, 5, 5, 3)))
    check_grads(_cpfe, (x, w["p0"], w["p1"]), order=1, modes=("rev",))
    x4 = jnp.asarray(RNG.normal(size=(1, 5, 5, 4)))
    check_grads(_smap, (x4, w["a1"], w["a2"], w["b1"], w["b2"]), order=1, modes=("rev",))


def _head(low, high, w, head):
    return F.pyramid_feature_attention(
        low, high, cpfe=lambda h: _cpfe(h, w["p0"], w["p1"]), high_proj=lambda h: h,
        low_proj=lambda t: t, spatial_map=lambda h: _smap(h, w["a1"], w["a2"], w["b1"], w["b2"]),
        head=_conv(head))


def test_head_grads_and_upsampling(x64):
    w = _weights()
    head = jnp.asarray(RNG.normal(size=(3, 3, 8, 1)))
    low = jnp.asarray(RNG.normal(size=(1, 6, 6, 4)))
    high = jnp.asarray(RNG.normal(size=(1, 3, 3, 3)))
    y = _head(low, high, w, head)
    assert y.shape == (1, 6, 6, 1) and float(y.min()) > 0 and float(y.max()) < 1
    check_grads(lambda lo, hi, hd: _head(lo, hi, w, hd), (low, high, head), order=1,
                modes=("rev",), atol=1e-4, rtol=1e-4)


def test_jit_vmap():
    w = _weights(np.float32)
    x = jnp.asarray(RNG.normal(size=(3, 5, 5, 4)), jnp.float32)
    y = _smap(x, w["a1"], w["a2"], w["b1"], w["b2"])
    assert_close(jax.jit(_smap)(x, w["a1"], w["a2"], w["b1"], w["b2"]), y)
    assert_close(jax.vmap(lambda a: _smap(a[None], w["a1"], w["a2"], w["b1"], w["b2"])[0])(x), y)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(dtype):
    w = {k: v.astype(dtype) for k, v in _weights(np.float32).items()}
    x = (jnp.asarray(RNG.normal(size=(1, 5, 5, 4))) * 1e4).astype(dtype)
    m = _smap(x, w["a1"], w["a2"], w["b1"], w["b2"])
    assert m.dtype == dtype and bool(jnp.all(jnp.isfinite(m)))


def test_bad_input():
    x = jnp.ones((1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"context_aware_pyramid: convs must be a non-empty"):
        F.context_aware_pyramid(x, convs=[])
    with pytest.raises(ValueError, match=r"context_aware_pyramid: convs must be layers with one "
                                         r"output size"):
        F.context_aware_pyramid(x, convs=[lambda t: t, lambda t: t[:, :2]])
    with pytest.raises(ValueError, match=r"pyramid_spatial_map: branches must be a non-empty"):
        F.pyramid_spatial_map(x, branches=[[]])
    with pytest.raises(ValueError, match=r"pyramid_spatial_map: branches must be branches "
                                         r"returning shape \(1, 4, 4, 1\)"):
        F.pyramid_spatial_map(x, branches=[[(lambda t: t, None)]])
    with pytest.raises(ValueError, match=r"pyramid_feature_attention: low must be at least rank 3"):
        F.pyramid_feature_attention(jnp.ones((4, 4)), x, cpfe=None, high_proj=None,
                                    low_proj=None, spatial_map=None, head=None)
