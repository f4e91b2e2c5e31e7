"""``functional.convolution.conv_general_dilated``: the XLA:CPU forms equal lax's convolution.

Every check runs on the CPU, where the rewritten forms are the ones lowered (asserted from the
lowered StableHLO), against ``jax.lax.conv_general_dilated`` and ``torch.nn.functional.conv2d``:
forward and gradients (input and kernel) in float32, under jit / vmap / grad / jvp, bf16
finite; and the GPU/TPU lowerings keep the one grouped/dilated convolution.
"""

import functools
import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax import lax

from attention_jax.functional import convolution as conv_mod
from attention_jax.functional.convolution import conv_general_dilated
from tests.gradcheck import check_grads
from tests.parity import assert_close, kernel_to_torch, nchw_to_nhwc, nhwc_to_nchw

RNG = np.random.default_rng(0)
NHWC = ("NHWC", "HWIO", "NHWC")


def _arrays(n, h, w, cin, k, cout, groups, dtype=np.float32, rng=None):
    rng = RNG if rng is None else rng
    x = rng.standard_normal((n, h, w, cin)).astype(dtype)
    kern = (rng.standard_normal((k, k, cin // groups, cout)) / np.sqrt(k * k * cin)).astype(dtype)
    return jnp.asarray(x), jnp.asarray(kern)


def _both(x, kern, strides, padding, **kw):
    """(ours, lax's) outputs and (input, kernel) gradients for a fixed random cotangent."""
    ours = lambda a, b: conv_general_dilated(a, b, strides, padding, dimension_numbers=NHWC, **kw)
    ref = lambda a, b: lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=NHWC,
                                                **kw)
    y_ref, vjp_ref = jax.vjp(ref, x, kern)
    ct = jnp.asarray(RNG.standard_normal(y_ref.shape).astype(np.float32)).astype(y_ref.dtype)
    y, vjp = jax.jit(lambda a, b, c: (lambda o: (o[0], o[1](c)))(jax.vjp(ours, a, b)))(x, kern, ct)
    return (y, vjp), (y_ref, vjp_ref(ct))


def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def _convs(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.convolution" in line]


def _pads(conv_line: str) -> int:
    """The largest padding of a lowered convolution (negative: a crop)."""
    pad = re.search(r"pad = \[(.*?)\]\]", conv_line).group(1)
    return max(int(v) for v in re.findall(r"-?\d+", pad))


# ---------------------------------------------------------------------------------------------
# Which form is taken
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [2, 4, 32])
def test_grouped_conv_is_split_per_group_on_cpu(groups):
    x, kern = _arrays(1, 6, 6, 128, 3, 128, groups)
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC,
                                          feature_group_count=groups)
    convs = _convs(_lowered(f, x, kern))
    assert len(convs) == groups
    assert not any(f"feature_group_count = {groups}" in c for c in convs)
    # and the backward is per group too: no grouped (or batch-grouped) convolution anywhere
    text = _lowered(jax.grad(lambda a, b: f(a, b).sum(), (0, 1)), x, kern)
    assert f"feature_group_count = {groups}" not in text
    assert not re.search(r"batch_group_count = [2-9]", text)


def test_many_groups_and_plain_convs_are_xla_own():
    x, kern = _arrays(1, 6, 6, 64, 3, 64, 64)  # depthwise: 64 groups > MAX_SPLIT_GROUPS
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC,
                                          feature_group_count=64)
    convs = _convs(_lowered(f, x, kern))
    assert len(convs) == 1 and "feature_group_count = 64" in convs[0]
    x, kern = _arrays(1, 6, 6, 32, 3, 32, 1)
    g = lambda a, b: conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC)
    assert _lowered(g, x, kern) == _lowered(
        lambda a, b: lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC),
        x, kern)


def test_sparse_dilated_conv_runs_by_regions_on_cpu():
    # ASPP rate 18 on a 28x28 map: a third of the taps read the input (more than SMALL_CHANNELS
    # channels: with up to FEW_CHANNELS the band below takes it, and the dense case with up to
    # SMALL_CHANNELS the patches).
    x, kern = _arrays(1, 28, 28, 32, 3, 32, 1)
    pad = ((18, 18), (18, 18))
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), pad, rhs_dilation=(18, 18),
                                          dimension_numbers=NHWC)
    convs = _convs(_lowered(f, x, kern))
    assert len(convs) == 9  # 3 bands x 3 bands, each on its crop (as negative padding)
    assert all(_pads(c) <= 0 for c in convs), convs
    # reverse mode: the input and filter gradients are by regions too (no padded convolution)
    grad = _lowered(jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), (0, 1)), x, kern)
    assert len(_convs(grad)) == 27 and all(_pads(c) <= 0 for c in _convs(grad))
    # dense enough (rate 6: 74% of tap-positions useful): XLA's padded convolution
    g = lambda a, b: conv_general_dilated(a, b, (1, 1), ((6, 6), (6, 6)), rhs_dilation=(6, 6),
                                          dimension_numbers=NHWC)
    convs = _convs(_lowered(g, x, kern))
    assert len(convs) == 1 and "pad = [[6, 6], [6, 6]]" in convs[0]


def test_dilation_past_the_map_keeps_only_the_centre_tap():
    # 7x7 map, rate 12: every off-centre tap reads padding -> one 1x1 convolution.
    x, kern = _arrays(2, 7, 7, 4, 3, 5, 1)
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), ((12, 12), (12, 12)),
                                          rhs_dilation=(12, 12), dimension_numbers=NHWC)
    convs = _convs(_lowered(f, x, kern))
    assert len(convs) == 1 and "tensor<1x1x4x5xf32>" in convs[0]
    (y, _), (y_ref, _) = _both(x, kern, (1, 1), ((12, 12), (12, 12)), rhs_dilation=(12, 12))
    assert_close(y, y_ref)


def test_small_channel_conv_is_one_matmul_on_cpu():
    # 8 -> 16 channels (STN's second conv): XLA:CPU would run its generic convolution loop.
    x, kern = _arrays(2, 14, 14, 8, 3, 16, 1)
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC)
    text = _lowered(f, x, kern)
    assert not _convs(text) and text.count("stablehlo.dot_general") == 1
    grad = _lowered(jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), (0, 1)), x, kern)
    assert not _convs(grad)
    cuda = jax.export.export(jax.jit(f), platforms=["cuda"])(x, kern).mlir_module()
    assert len(_convs(cuda)) == 1
    # fewer than MIN_PATCH_OUT outputs and more than FEW_CHANNELS inputs: XLA's own
    x1, k1 = _arrays(2, 14, 14, 16, 3, 1, 1)
    assert len(_convs(_lowered(f, x1, k1))) == 1


def _dots(text: str) -> int:
    return text.count("stablehlo.dot_general")


@pytest.mark.parametrize("cin,cout,k,dil,w", [(2, 1, 7, 1, 14), (4, 4, 3, 4, 14),
                                              (1, 3, 3, 2, 150)])
def test_few_channel_conv_is_a_banded_matmul_on_cpu(cin, cout, k, dil, w):
    # CBAM's 2 -> 1 7x7 gate, BAM's 4 -> 4 dilated convs (and 150 columns: three blocks): no
    # convolution, the band built from the kernel and one matmul; reverse mode is matmuls too;
    # GPU/TPU keep the one convolution.
    x, kern = _arrays(2, 9, w, cin, k, cout, 1)
    p = k // 2 * dil
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), ((p, p), (p, p)),
                                          rhs_dilation=(dil, dil), dimension_numbers=NHWC)
    text = _lowered(f, x, kern)
    assert not _convs(text) and _dots(text) == 2
    grad = _lowered(jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), (0, 1)), x, kern)
    assert not _convs(grad) and _dots(grad) >= 4
    for platform in ("cuda", "tpu"):
        text = jax.export.export(jax.jit(f), platforms=[platform])(x, kern).mlir_module()
        assert len(_convs(text)) == 1, platform


def test_few_channel_form_bounds():
    # Strided, grouped, one tap (pointwise), more than FEW_CHANNELS, 1-D or bf16: not the band.
    f = lambda a, b, s=1, g=1: conv_general_dilated(a, b, (s, s), "SAME", dimension_numbers=NHWC,
                                                    feature_group_count=g)
    x, kern = _arrays(1, 10, 10, 2, 3, 2, 1)
    assert not _convs(_lowered(f, x, kern))
    assert f(x[:0], kern).shape == (0, 10, 10, 2)  # an empty batch: the band, empty
    assert _convs(_lowered(functools.partial(f, s=2), x, kern))
    assert _convs(_lowered(functools.partial(f, g=2), x, _arrays(1, 10, 10, 2, 3, 2, 2)[1]))
    one_tap = _lowered(f, *_arrays(1, 10, 10, 2, 1, 2, 1))  # the pointwise matmul instead
    assert not _convs(one_tap) and _dots(one_tap) == 1
    few = conv_mod.FEW_CHANNELS
    assert _convs(_lowered(f, *_arrays(1, 10, 10, few + 1, 3, 1, 1)))
    assert _convs(_lowered(f, *_arrays(1, 10, 10, 1, 3, few + 1, 1)))
    assert _convs(_lowered(f, x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16)))
    g = lambda a, b: conv_general_dilated(a, b, (1,), "SAME", dimension_numbers=("NWC", "WIO",
                                                                                 "NWC"))
    assert _convs(_lowered(g, x[:, 0], kern[0]))


def test_pointwise_form_bounds():
    # A 1x1 unpadded convolution over a map of more than one pixel is one matmul on the CPU
    # (strided and grouped too); with padding, or on one pixel (a gate's fully connected layer),
    # it stays XLA's; GPU/TPU keep the convolution.
    f = lambda a, b, s=1, g=1, pad="VALID": conv_general_dilated(
        a, b, (s, s), pad, dimension_numbers=NHWC, feature_group_count=g)
    x, kern = _arrays(2, 9, 11, 6, 1, 4, 1)
    for kw in ({}, {"s": 2}):
        text = _lowered(functools.partial(f, **kw), x, kern)
        assert not _convs(text) and _dots(text) == 1, kw
    grouped = _lowered(functools.partial(f, g=2), x, _arrays(1, 1, 1, 6, 1, 4, 2)[1])
    assert not _convs(grouped) and _dots(grouped) == 2
    assert len(_convs(_lowered(functools.partial(f, pad=((1, 0), (0, 0))), x, kern))) == 1
    assert len(_convs(_lowered(f, x[:, :1, :1], kern))) == 1
    for platform in ("cuda", "tpu"):
        text = jax.export.export(jax.jit(f), platforms=[platform])(x, kern).mlir_module()
        assert len(_convs(text)) == 1 and not _dots(text), platform


def _grad_text(f, x, kern):
    return _lowered(jax.grad(lambda a, b: jnp.sum(jnp.tanh(f(a, b))), (0, 1)), x, kern)


def test_few_output_conv_takes_its_filter_gradient_per_tap():
    # More than SMALL_CHANNELS in, at most SMALL_CHANNELS out, few output pixels (PFANet's
    # 64 -> 16 branches at batch 1): XLA's convolution forward and for the input gradient, the
    # filter gradient as one matmul per tap. Over the pixel bound, with more outputs, with one
    # tap, or grouped: XLA's filter gradient (no matmul). GPU/TPU keep XLA's throughout.
    f = lambda a, b, s=1, d=1, g=1: conv_general_dilated(
        a, b, (s, s), ((d, d), (d, d)), rhs_dilation=(d, d), dimension_numbers=NHWC,
        feature_group_count=g)
    small = conv_mod.SMALL_CHANNELS
    x, kern = _arrays(1, 28, 28, 64, 3, small, 1)
    fwd = _lowered(f, x, kern)
    assert len(_convs(fwd)) == 1 and not _dots(fwd)
    for kw in ({}, {"d": 3}, {"s": 2}):
        grad = _grad_text(functools.partial(f, **kw), x, kern)
        assert len(_convs(grad)) == 2 and _dots(grad) == 9, kw  # forward, input gradient
    rows = conv_mod.TAP_GRAD_MAX_ROWS
    n_over = rows // (28 * 28) + 1
    assert _dots(_grad_text(f, *_arrays(n_over, 28, 28, 64, 3, small, 1))) == 0
    assert _dots(_grad_text(f, *_arrays(1, 28, 28, 64, 3, small + 1, 1))) == 0
    grouped = _grad_text(functools.partial(f, g=2), *_arrays(1, 28, 28, 64, 3, small, 2))
    assert "feature_group_count = 2" not in grouped and not _dots(grouped)  # split, XLA per group
    x1, k1 = _arrays(1, 8, 8, 64, 1, small, 1)  # one tap, padded: XLA's convolution
    assert _dots(_grad_text(f, x1, k1)) == 0
    for platform in ("cuda", "tpu"):
        g = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.tanh(f(a, b))), (0, 1)))
        text = jax.export.export(g, platforms=[platform])(x, kern).mlir_module()
        assert _convs(text) and not _dots(text), platform


def test_gpu_and_tpu_lowerings_keep_the_one_convolution():
    x, kern = _arrays(1, 28, 28, 8, 3, 8, 2)
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), ((18, 18), (18, 18)),
                                          rhs_dilation=(18, 18), dimension_numbers=NHWC,
                                          feature_group_count=2)
    for platform in ("cuda", "tpu"):
        text = jax.export.export(jax.jit(f), platforms=[platform])(x, kern).mlir_module()
        convs = _convs(text)
        assert len(convs) == 1 and "feature_group_count = 2" in convs[0], platform
        assert "pad = [[18, 18], [18, 18]]" in convs[0], platform
    cpu = _convs(_lowered(f, x, kern))
    assert len(cpu) == 18  # 2 groups x 9 regions


def test_modules_take_the_cpu_forms():
    # SplitAttention's grouped conv (linen and nnx) and ASPP's rate-18 branch lower per group /
    # per region on the CPU.
    import attention_jax as aj

    x = jnp.ones((1, 28, 28, 16))
    m = aj.create_attention("splat", 16)
    v = m.init(jax.random.key(0), x)
    text = _lowered(lambda v, x: m.apply(v, x), v, x)
    assert "feature_group_count = 2" not in text
    mn = aj.create_attention("splat", 16, api="nnx", rngs=nnx.Rngs(0))
    graph, state = nnx.split(mn)
    text = _lowered(lambda s, x: nnx.merge(graph, s)(x), state, x)
    assert "feature_group_count = 2" not in text
    x = jnp.ones((1, 28, 28, 32))  # more than SMALL_CHANNELS: rate 6 stays XLA's
    a = aj.create_attention("aspp", 32)
    va = a.init(jax.random.key(0), x)
    text = _lowered(lambda v, x: a.apply(v, x), va, x)
    assert "pad = [[18, 18], [18, 18]]" not in text and "pad = [[6, 6], [6, 6]]" in text
    # The layer factories' convolutions (the non-local block's 1x1 projections, linen and nnx)
    # take the CPU forms: pointwise matmuls, no convolution left.
    x = jnp.ones((2, 6, 6, 16))
    nl = aj.create_attention("nl", 16)
    vn = nl.init(jax.random.key(0), x)
    assert not _convs(_lowered(lambda v, x: nl.apply(v, x), vn, x))
    nn_nl = aj.create_attention("nl", 16, api="nnx", rngs=nnx.Rngs(0))
    graph, state = nnx.split(nn_nl)
    assert not _convs(_lowered(lambda s, x: nnx.merge(graph, s)(x), state, x))


# ---------------------------------------------------------------------------------------------
# Same results as lax.conv_general_dilated and as PyTorch
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    # (h, w, cin, k, cout, groups, stride, dilation, padding)
    (9, 11, 6, 3, 6, 2, 1, 1, "SAME"),
    (9, 11, 6, 3, 9, 3, 2, 1, "SAME"),
    (9, 11, 6, 3, 6, 2, 1, 2, "VALID"),
    (9, 11, 8, 1, 8, 4, 1, 1, "VALID"),
    (8, 8, 4, 3, 6, 2, 2, 3, ((3, 2), (0, 4))),
    (12, 7, 4, 3, 4, 1, 1, 6, ((6, 6), (6, 6))),
    (12, 7, 4, 3, 4, 1, 1, 9, ((9, 9), (9, 9))),
    (12, 13, 4, 3, 4, 2, 2, 5, ((5, 5), (5, 5))),
    (12, 13, 4, 3, 4, 1, 3, 4, ((4, 1), (9, 2))),
    (12, 13, 4, 3, 4, 1, 1, 7, "SAME"),
    (5, 5, 4, 5, 4, 2, 1, 4, ((8, 8), (8, 8))),  # taps wholly in padding; some zero regions
    (6, 6, 4, 3, 4, 1, 1, 20, ((20, 20), (20, 20))),  # only the centre tap ever reads x
    (6, 6, 4, 3, 4, 1, 1, 3, ((9, 9), (9, 9))),  # output border that reads only padding
    (10, 9, 1, 3, 8, 1, 1, 1, "SAME"),  # small channels: patches (STN's first conv)
    (11, 12, 8, 3, 16, 1, 2, 2, ((3, 1), (0, 2))),  # patches, strided, dilated, uneven pads
    (9, 9, 16, 5, 16, 2, 1, 1, "VALID"),  # split into groups of 8 -> 8, each by patches
    (10, 9, 2, 7, 1, 1, 1, 1, "SAME"),  # few channels: the band (CBAM's gate)
    (9, 11, 3, 3, 2, 1, 1, 2, ((0, 3), (4, 1))),  # band, dilated, uneven pads
    (9, 11, 2, 3, 3, 1, 1, 1, ((-1, 2), (2, -2))),  # band, negative padding
    (5, 70, 2, 3, 1, 1, 1, 3, ((3, 3), (3, 0))),  # band, two blocks of columns
    (12, 7, 8, 3, 8, 1, 1, 9, ((9, 9), (9, 9))),  # regions with more than FEW_CHANNELS
    (9, 11, 6, 1, 5, 1, 1, 1, "VALID"),  # pointwise: a matmul over the pixels
    (9, 11, 6, 1, 5, 1, 2, 3, "SAME"),  # pointwise, strided (a dilation changes nothing)
    (9, 11, 6, 1, 5, 1, 1, 1, ((1, 0), (0, 0))),  # 1x1 with padding: XLA's own
    (1, 1, 6, 1, 5, 1, 1, 1, "VALID"),  # 1x1 on one pixel (a gate's fc): XLA's own
    (9, 11, 20, 3, 5, 1, 1, 2, ((0, 3), (4, 1))),  # few outputs: filter gradient per tap
    (9, 11, 20, 3, 5, 1, 2, 1, "SAME"),  # the same, strided
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_matches_lax_forward_and_gradients(cfg):
    h, w, cin, k, cout, groups, s, d, pad = cfg
    x, kern = _arrays(2, h, w, cin, k, cout, groups)
    (y, (gx, gk)), (y_ref, (gx_ref, gk_ref)) = _both(
        x, kern, (s, s), pad, rhs_dilation=(d, d), feature_group_count=groups)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert_close(y, y_ref, what="forward")
    assert_close(gx, gx_ref, what="input gradient")
    assert_close(gk, gk_ref, what="kernel gradient")


def test_configs_exercise_every_form():
    # The configurations above reach the split, the regions, the patches, the band, the
    # pointwise matmul, the per-tap filter gradient and XLA's own convolution.
    seen = set()
    for h, w, cin, k, cout, groups, s, d, pad in CONFIGS:
        x, kern = _arrays(1, h, w, cin, k, cout, groups)
        f = functools.partial(conv_general_dilated, window_strides=(s, s), padding=pad,
                              rhs_dilation=(d, d), dimension_numbers=NHWC,
                              feature_group_count=groups)
        text = _lowered(f, x, kern)
        n = len(_convs(text))
        if groups > 1 and "feature_group_count" not in text:
            seen.add("split")
        if n == 0 and _dots(text) == 1 and k == 1:  # the pixels as rows times the kernel
            seen.add("pointwise")
        elif n == 0 and _dots(text) == 1:  # the patch matrix times the kernel
            seen.add("patches")
        elif n == 0 and _dots(text) == 2:  # the band built from the kernel, the matmul
            seen.add("band")
        elif groups == 1 and n == 1 and _dots(_grad_text(f, x, kern)):
            seen.add("tap_grad")  # XLA's convolution, the filter gradient per tap
        elif groups == 1:
            seen.add("regions" if n > 1 else "xla")
    assert seen == {"split", "regions", "xla", "patches", "band", "pointwise", "tap_grad"}, seen


def _torch_conv(x, kern, stride, dilation, padding, groups):
    xt = nhwc_to_nchw(x).requires_grad_(True)
    kt = torch.from_numpy(kernel_to_torch(np.asarray(kern)).copy()).requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, kt, stride=stride, padding=padding, dilation=dilation,
                                    groups=groups)
    return xt, kt, yt


@pytest.mark.parametrize("h,cin,cout,groups,stride,dilation,k", [
    (28, 64, 128, 2, 1, 1, 3),  # splat (quick sweep)
    (14, 32, 32, 32, 1, 1, 3),  # one channel per group but <= MAX_SPLIT_GROUPS
    (13, 16, 8, 4, 2, 1, 3),
    (28, 8, 8, 1, 1, 18, 3),  # ASPP rate 18
    (28, 8, 8, 1, 1, 12, 3),
    (10, 8, 8, 2, 2, 6, 3),
    (7, 8, 8, 1, 1, 12, 3),
    (28, 2, 1, 1, 1, 1, 7),  # CBAM's spatial gate: the band
    (28, 4, 4, 1, 1, 4, 3),  # BAM's dilated convs (64 channels, reduction 16): the band
    (14, 40, 16, 1, 1, 1, 1),  # pointwise (a self-attention block's projection)
    (13, 16, 8, 1, 2, 1, 1),  # pointwise, strided (a ResNet shortcut)
    (14, 16, 8, 2, 1, 1, 1),  # pointwise in two groups
    (28, 64, 16, 1, 1, 3, 3),  # PFANet's branch: the filter gradient per tap
])
def test_matches_torch_conv2d(h, cin, cout, groups, stride, dilation, k):
    x, kern = _arrays(2, h, h, cin, k, cout, groups)
    p = dilation * (k // 2)
    f = lambda a, b: conv_general_dilated(a, b, (stride, stride), ((p, p), (p, p)),
                                          rhs_dilation=(dilation, dilation),
                                          dimension_numbers=NHWC, feature_group_count=groups)
    y, vjp = jax.vjp(jax.jit(f), x, kern)
    ct = RNG.standard_normal(y.shape).astype(np.float32)
    gx, gk = vjp(jnp.asarray(ct))
    xt, kt, yt = _torch_conv(x, kern, stride, dilation, p, groups)
    yt.backward(nhwc_to_nchw(ct))
    assert_close(y, nchw_to_nhwc(yt), what="forward")
    assert_close(gx, nchw_to_nhwc(xt.grad), what="input gradient")
    assert_close(gk, kt.grad.numpy().transpose(2, 3, 1, 0), what="kernel gradient")


@pytest.mark.parametrize("dn,xshape,kshape,pad,dil,groups", [
    (None, (2, 6, 9, 10), (6, 3, 3, 3), ((2, 2), (2, 2)), (1, 1), 2),  # NCHW / OIHW default
    (("NWC", "WIO", "NWC"), (2, 14, 6), (3, 6, 6), ((12, 12),), (12,), 1),  # 1-D, regions
    (("NCHW", "OIHW", "NCHW"), (2, 3, 9, 8), (2, 3, 5, 5), ((2, 1), (3, 2)), (1, 2), 1),  # band
    (("NWC", "WIO", "NWC"), (2, 14, 6), (3, 2, 6), "SAME", (1,), 3),  # 1-D, split
    (("NDHWC", "DHWIO", "NDHWC"), (1, 5, 6, 7, 4), (3, 3, 3, 2, 4), ((4, 4),) * 3, (4, 4, 4), 2),
    (("NCHW", "HWIO", "NHWC"), (2, 4, 9, 9), (3, 3, 2, 6), "SAME", (1, 1), 2),
    (("NCHW", "OIHW", "NCHW"), (2, 6, 5, 7), (4, 6, 1, 1), "VALID", (1, 1), 1),  # pointwise
    (("NWC", "WIO", "NWC"), (2, 9, 6), (1, 6, 4), "VALID", (1,), 1),  # 1-D pointwise
])
def test_other_dimension_numbers_and_ranks(dn, xshape, kshape, pad, dil, groups):
    x = jnp.asarray(RNG.standard_normal(xshape).astype(np.float32))
    kern = jnp.asarray(RNG.standard_normal(kshape).astype(np.float32))
    strides = (1,) * (len(xshape) - 2)
    kw = dict(rhs_dilation=dil, dimension_numbers=dn, feature_group_count=groups)
    ours = lambda a, b: conv_general_dilated(a, b, strides, pad, **kw)
    ref = lambda a, b: lax.conv_general_dilated(a, b, strides, pad, **kw)
    assert len(_convs(_lowered(ours, x, kern))) != 1  # a CPU form, not XLA's own
    assert_close(jax.jit(ours)(x, kern), ref(x, kern))
    g = jax.grad(lambda a, b: jnp.sum(jnp.sin(ours(a, b))), (0, 1))(x, kern)
    g_ref = jax.grad(lambda a, b: jnp.sum(jnp.sin(ref(a, b))), (0, 1))(x, kern)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Transformations, dtypes, precision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups,dil,cin,cout", [(2, 1, 4, 4), (1, 18, 8, 8), (1, 2, 2, 3)])
def test_vmap_jvp_and_second_order(groups, dil, cin, cout, x64):
    # split per group; by regions (the custom JVP); the band. Inputs of their own seed, not the
    # module's stream (whose draws depend on which tests ran before in the worker): the
    # second-order finite differences below are within check_grads' 1e-5 for most inputs,
    # not all (one stream position in 40 gave 2.5e-5 for the split case).
    x, kern = _arrays(2, 20, 20, cin, 3, cout, groups, np.float64, rng=np.random.default_rng(1))
    pad = ((dil, dil), (dil, dil))
    f = lambda a, b: conv_general_dilated(a, b, (1, 1), pad, rhs_dilation=(dil, dil),
                                          dimension_numbers=NHWC, feature_group_count=groups)
    ref = lambda a, b: lax.conv_general_dilated(a, b, (1, 1), pad, rhs_dilation=(dil, dil),
                                                dimension_numbers=NHWC,
                                                feature_group_count=groups)
    # vmap over an extra leading axis of the input
    xs = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(jax.vmap(f, (0, None))(xs, kern),
                               jax.vmap(ref, (0, None))(xs, kern), rtol=1e-12, atol=1e-12)
    # forward mode (the regions' custom JVP) and second order, against finite differences
    check_grads(lambda a, b: jnp.tanh(f(a, b)), (x[:1], kern), order=2, modes=("fwd", "rev"))
    t = jax.jvp(f, (x, kern), (x, kern))[1]
    np.testing.assert_allclose(t, jax.jvp(ref, (x, kern), (x, kern))[1], rtol=1e-12, atol=1e-12)


def test_per_tap_filter_gradient_under_vmap_jvp_and_second_order(x64):
    # The per-tap form's custom JVP against lax's own derivatives, float64: forward mode,
    # forward-over-reverse (Hessian-vector products) and reverse-over-reverse, under vmap too.
    x, kern = _arrays(2, 12, 10, 20, 3, 5, 1, np.float64, rng=np.random.default_rng(2))
    kw = dict(window_strides=(1, 1), padding=((2, 2), (1, 3)), rhs_dilation=(2, 2),
              dimension_numbers=NHWC)
    f = lambda a, b: conv_general_dilated(a, b, **kw)
    ref = lambda a, b: lax.conv_general_dilated(a, b, **kw)
    assert _dots(_grad_text(f, x, kern)) == 9  # the form under test
    close = functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-10)
    xs = jnp.stack([x, 2 * x])
    close(jax.vmap(f, (0, None))(xs, kern), jax.vmap(ref, (0, None))(xs, kern))
    close(jax.jvp(f, (x, kern), (x, kern))[1], jax.jvp(ref, (x, kern), (x, kern))[1])

    def grads(fn):
        return jax.grad(lambda a, b: jnp.sum(jnp.tanh(fn(a, b))), (0, 1))

    for a, b in zip(jax.vmap(grads(f), (0, None))(xs, kern),
                    jax.vmap(grads(ref), (0, None))(xs, kern), strict=True):
        close(a, b)
    tangents = (0.3 * x, 0.7 * kern)
    for a, b in zip(jax.jvp(grads(f), (x, kern), tangents)[1],
                    jax.jvp(grads(ref), (x, kern), tangents)[1], strict=True):
        close(a, b)
    gg = lambda fn: jax.grad(lambda b: jnp.sum(grads(fn)(x, b)[0] ** 2))(kern)
    close(gg(f), gg(ref))


def test_bf16_finite_and_close_to_float32():
    x, kern = _arrays(2, 28, 28, 16, 3, 16, 2)
    for dil in (1, 18):
        pad = ((dil, dil), (dil, dil))
        f = lambda a, b: conv_general_dilated(a, b, (1, 1), pad, rhs_dilation=(dil, dil),  # noqa: B023
                                              dimension_numbers=NHWC, feature_group_count=2)
        y32 = f(x, kern)
        big = (x * 1e4).astype(jnp.bfloat16)
        y16 = jax.jit(f)(big, kern.astype(jnp.bfloat16))
        assert y16.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y16)))
        y16 = jax.jit(f)(x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16))
        assert_close(y16.astype(jnp.float32), y32, rtol=3e-2, atol_rel=3e-2)
        g = jax.grad(lambda a, b: f(a, b).astype(jnp.float32).sum(), (0, 1))(  # noqa: B023
            big, kern.astype(jnp.bfloat16))
        assert all(bool(jnp.all(jnp.isfinite(t))) for t in g)


def test_preferred_element_type_and_precision_pass_through():
    x, kern = _arrays(2, 12, 12, 8, 3, 8, 2)
    xb, kb = x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16)
    kw = dict(dimension_numbers=NHWC, feature_group_count=2,
              preferred_element_type=jnp.float32, precision=lax.Precision.HIGHEST)
    y = conv_general_dilated(xb, kb, (1, 1), "SAME", **kw)
    y_ref = lax.conv_general_dilated(xb, kb, (1, 1), "SAME", **kw)
    assert y.dtype == y_ref.dtype == jnp.float32
    assert_close(y, y_ref)
    text = _lowered(lambda a, b: conv_general_dilated(a, b, (1, 1), "SAME", **kw), xb, kb)
    convs = _convs(text)
    assert len(convs) == 2 and all("HIGHEST" in c and "-> tensor<2x12x12x4xf32>" in c
                                   for c in convs), convs


def test_bad_groups_raise_lax_error():
    x, kern = _arrays(1, 6, 6, 6, 3, 6, 1)
    for fn in (lax.conv_general_dilated, conv_general_dilated):
        with pytest.raises(ValueError, match="feature_group_count must divide"):
            fn(x, kern[:, :, :3], (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4)


def test_flax_conv_layers_accept_it():
    # The call shapes Flax uses (positional strides/padding, keyword rest; nnx adds
    # out_sharding): both layers give the same output as with lax's convolution.
    x = jnp.asarray(RNG.standard_normal((2, 10, 10, 8)).astype(np.float32))
    lin = nn.Conv(8, (3, 3), feature_group_count=2, kernel_dilation=2, padding=((4, 4), (4, 4)))
    v = lin.init(jax.random.key(0), x)
    ours = nn.Conv(8, (3, 3), feature_group_count=2, kernel_dilation=2,
                   padding=((4, 4), (4, 4)), conv_general_dilated=conv_general_dilated)
    assert_close(ours.apply(v, x), lin.apply(v, x))
    a = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    b = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0),
                 conv_general_dilated=conv_general_dilated)
    assert_close(b(x), a(x))


def test_bands_cover_each_output_once():
    for n, k, s, d, p in itertools.product((1, 5, 13), (1, 3, 5), (1, 2, 3), (1, 4, 9),
                                           ((0, 0), (4, 4), (9, 2), (0, 11))):
        bands = conv_mod._bands(n, k, s, d, p)
        n_out = (n + p[0] + p[1] - (k - 1) * d - 1) // s + 1
        covered = [y for lo, hi, _, _ in bands for y in range(lo, hi)]
        assert covered == list(range(max(n_out, 0)))
        for lo, hi, ka, kb in bands:  # exactly the taps that read the input
            for y in (lo, hi - 1):
                valid = [t for t in range(k) if 0 <= y * s + t * d - p[0] < n]
                assert valid == list(range(ka, kb)), (n, k, s, d, p, y)
