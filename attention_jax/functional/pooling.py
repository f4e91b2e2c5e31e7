"""Pooling descriptors used by channel, spatial and hybrid attention (NHWC), and the private 2x2
max pool of the STN localisation net and of non-local attention's sub-sampling.

Means accumulate in float32 and are cast back to the input's dtype, so bf16/fp16 feature maps
with large values give finite, accurate descriptors. A pool over nothing (H * W = 0 for the
global pools and the covariance, C = 0 for the channel pools) is 0, not NaN: an empty feature map
goes through every mechanism to an empty output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._validation import check_nhwc, check_positive_int, check_rank, fail
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional._numerics import acc_dtype, amax, mean

_HIGHEST = jax.lax.Precision.HIGHEST

# Up to this many elements, ``global_avg_pool`` of a float32/64 map is a matmul with ones on
# the CPU (``_mean_hw_matmul``). Measured on an AMD EPYC Zen 5 (jaxlib 0.10), a (1, 28, 28, 64) map:
# XLA's reduction 60-100 us, the matmul 33 us, PyTorch 15-22 us; SE's forward at batch 1
# 0.08-0.12 -> 0.05-0.07 ms. At batch 8 (400k elements) the two were even in the forward and
# the matmul measured no better in forward+backward, so larger maps keep XLA's reduction.
MATMUL_MEAN_MAX = 1 << 17

__all__ = [
    "global_avg_pool",
    "global_max_pool",
    "channel_avg_pool",
    "channel_max_pool",
    "channel_avg_max_pool",
    "avg_pool_h",
    "avg_pool_w",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "covariance_pool",
    "newton_schulz_sqrt",
]


def _max_pool_2x2(x: jax.Array, *, ceil_mode: bool) -> jax.Array:
    """2x2 max pool, stride 2, of an (N, H, W, C) map -> (N, Ho, Wo, C), as PyTorch's
    ``max_pool2d(x, 2, ceil_mode=ceil_mode)``: with ``ceil_mode`` an odd edge's partial windows
    are kept (Ho = ceil(H / 2)), without they are dropped (Ho = H // 2).

    The STN localisation net's pools (``ceil_mode=True``) and non-local's key/value sub-sampling
    (``False``). Private: no validation here, the callers check ``x``.
    """
    h, w = x.shape[1], x.shape[2]
    if ceil_mode and (h % 2 or w % 2):  # the partial windows: pad with -inf
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    elif not ceil_mode:
        x = x[:, : h // 2 * 2, : w // 2 * 2]
    return _window_max2(x)


def _quarter_max(x: jax.Array) -> jax.Array:
    """The elementwise max of the four strided (N, Ho, Wo, C) quarters of an (N, 2Ho, 2Wo, C)
    map (one per position in a 2x2 window)."""
    q00, q01, q10, q11 = (x[:, a::2, b::2] for a in (0, 1) for b in (0, 1))
    return jnp.maximum(jnp.maximum(q00, q01), jnp.maximum(q10, q11))


def _reduce_window_max(x: jax.Array) -> jax.Array:
    # A Python-scalar init lets JAX lower this to reduce_window_max.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@jax.custom_jvp
def _window_max2(x: jax.Array) -> jax.Array:
    """2x2 windows, stride 2, of an (N, 2Ho, 2Wo, C) map -> (N, Ho, Wo, C).

    On the CPU the window max is the elementwise max of the map's four strided quarters, one
    loop that XLA fuses with the ReLU (and bias) before it; elsewhere (GPU, TPU) it is XLA's
    window reduction (``jax.lax.platform_dependent``). XLA:CPU hands ``reduce_window``, with
    the bias add and ReLU before it, to YNNPACK, which ran it 1.2-4x slower than the quarters'
    loop (Intel Xeon, 2026-12-03, the STN localisation net's two pools with their bias and
    ReLU: (32, 28, 28, 8) 0.27 -> 0.14 ms, (1, 14, 14, 16) 0.05 -> 0.01 ms); the STN row's
    forward at batch 8 / 32 0.43 / 1.28 -> 0.36 / 1.14 ms, forward+backward unchanged.

    Its derivative is written out (the JVP below) rather than left to ``reduce_window``'s: that
    one's reverse mode is XLA's select-and-scatter, which XLA:CPU runs ~2x slower than
    PyTorch's max-pool backward (STN's localisation net, batch 32). The tangent takes each
    window's first maximum in row-major order, PyTorch's choice and ``reduce_window``'s, so
    ties give the same gradient; its transpose is one select over the input. (The tangent as
    selects over the four quarters measured 5-9% slower forward+backward at batch 8 and 32.)
    Non-local attention with ``sub_sample`` (14x14x128, same CPU) went from XLA's pool and its
    derivative to these: forward at batch 8 / 32 0.91 / 2.72 -> 0.76 / 2.26 ms,
    forward+backward 3.40 / 12.4 -> 2.57 / 9.05 ms.
    """
    return jax.lax.platform_dependent(x, cpu=_quarter_max, default=_reduce_window_max)


@_window_max2.defjvp
def _window_max2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out = _window_max2(x)
    n, h, w, c = x.shape
    windows = (n, h // 2, 2, w // 2, 2, c)
    hit = x.reshape(windows) == out[:, :, None, :, None, :]
    h00, h01, h10, h11 = (hit[:, :, a, :, b, :] for a in (0, 1) for b in (0, 1))
    # each window's first hit in row-major order, as (N, Ho, 2, Wo, 2, C) like ``windows``
    top = jnp.stack([h00, h01 & ~h00], 3)
    bottom = jnp.stack([h10 & ~(h00 | h01), h11 & ~(h00 | h01 | h10)], 3)
    mask = jnp.stack([top, bottom], 2)
    return out, jnp.sum(jnp.where(mask, t.reshape(windows), 0), axis=(2, 4)).astype(t.dtype)


@batch_dims(x=NHWC)
def global_avg_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Global average pooling over height and width (the SE "squeeze").

    On the CPU a float32/64 map of at most ``MATMUL_MEAN_MAX`` elements is summed as a matmul
    with ones (XLA:CPU's reduction is 2-4x slower there); other backends and larger maps use
    ``jnp.mean``. bf16/fp16 accumulate in float32.

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the pooled axes as size 1.

    Returns:
      (N, C), or (N, 1, 1, C) with ``keepdims=True``; dtype of ``x``.
    """
    check_nhwc("global_avg_pool", "x", x)
    n, h, w, c = x.shape
    if (x.dtype not in (jnp.float32, jnp.float64) or h * w < 2 or n * c == 0
            or x.size > MATMUL_MEAN_MAX):
        return mean(x, (1, 2), keepdims=keepdims)
    out = jax.lax.platform_dependent(x, cpu=_mean_hw_matmul, default=lambda a: mean(a, (1, 2)))
    return out.reshape(n, 1, 1, c) if keepdims else out


def _mean_hw_matmul(x: jax.Array) -> jax.Array:
    # (N, 1, HW) ones times (N, HW, C), batched over N: YNNPACK's matmul streams the map once.
    # Its gradient stays a broadcast (XLA rewrites the transposed matmul, an outer product).
    n, h, w, c = x.shape
    ones = jnp.ones((n, 1, h * w), x.dtype)
    s = jax.lax.dot_general(ones, x.reshape(n, h * w, c), (((2,), (1,)), ((0,), (0,))),
                            precision=_HIGHEST)
    return (s / (h * w)).reshape(n, c)


@batch_dims(x=NHWC)
def global_max_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Global max pooling over height and width.

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the pooled axes as size 1.

    Returns:
      (N, C), or (N, 1, 1, C) with ``keepdims=True``; dtype of ``x``.
    """
    check_nhwc("global_max_pool", "x", x)
    return amax(x, (1, 2), keepdims=keepdims)


@batch_dims(x=NHWC)
def channel_avg_pool(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
    """Average over channels at every pixel (half of the CBAM spatial descriptor).

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the channel axis as size 1.

    Returns:
      (N, H, W, 1), or (N, H, W) with ``keepdims=False``; dtype of ``x``.
    """
    check_nhwc("channel_avg_pool", "x", x)
    return mean(x, -1, keepdims=keepdims)


@batch_dims(x=NHWC)
def channel_max_pool(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
    """Maximum over channels at every pixel.

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the channel axis as size 1.

    Returns:
      (N, H, W, 1), or (N, H, W) with ``keepdims=False``; dtype of ``x``.
    """
    check_nhwc("channel_max_pool", "x", x)
    return amax(x, -1, keepdims=keepdims)


@batch_dims(x=NHWC)
def channel_avg_max_pool(x: jax.Array) -> jax.Array:
    """CBAM's spatial descriptor: channel-wise average and max, concatenated (avg first).

    The order follows the paper and timm (``[AvgPool(F); MaxPool(F)]``); the official CBAM code
    stacks max first, so its 7x7 kernel's two input channels are swapped relative to ours.

    Args:
      x: (N, H, W, C) feature map.

    Returns:
      (N, H, W, 2): channel 0 the mean, channel 1 the max; dtype of ``x``.
    """
    check_nhwc("channel_avg_max_pool", "x", x)
    return jnp.concatenate([mean(x, -1, keepdims=True), amax(x, -1, keepdims=True)], -1)


@batch_dims(x=NHWC)
def avg_pool_h(x: jax.Array) -> jax.Array:
    """Coordinate attention's height descriptor: every row averaged over the width.

    Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021, Eq. 2
    (``z^h``; official ``nn.AdaptiveAvgPool2d((None, 1))``).

    Args:
      x: (N, H, W, C) feature map.

    Returns:
      (N, H, 1, C); dtype of ``x`` (accumulated in float32).
    """
    check_nhwc("avg_pool_h", "x", x)
    return mean(x, 2, keepdims=True)


@batch_dims(x=NHWC)
def avg_pool_w(x: jax.Array) -> jax.Array:
    """Coordinate attention's width descriptor: every column averaged over the height.

    Hou et al., CVPR 2021, Eq. 3 (``z^w``; official ``nn.AdaptiveAvgPool2d((1, None))``).

    Args:
      x: (N, H, W, C) feature map.

    Returns:
      (N, 1, W, C); dtype of ``x`` (accumulated in float32).
    """
    check_nhwc("avg_pool_w", "x", x)
    return mean(x, 1, keepdims=True)


@batch_dims(x=NHWC)
def avg_pool2d(
    x: jax.Array,
    *,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    count_include_pad: bool = True,
) -> jax.Array:
    """Square-window average pooling, as ``torch.nn.functional.avg_pool2d`` (NHWC).

    Sums accumulate in float32 for bf16/fp16 input (a 15x15 window of |x| ~ 1e4 overflows a
    float16 sum), then cast back.

    Args:
      x: (N, H, W, C) feature map.
      kernel_size: window side k >= 1.
      stride: step (default ``kernel_size``).
      padding: zeros added on every side, at most ``kernel_size // 2`` (PyTorch's rule).
      count_include_pad: divide by the full window (True) or by its unpadded part (False).

    Returns:
      (N, Ho, Wo, C) with ``Ho = (H + 2 * padding - kernel_size) // stride + 1``; dtype of ``x``.
    """
    fn = "avg_pool2d"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "kernel_size", kernel_size)
    stride = kernel_size if stride is None else stride
    check_positive_int(fn, "stride", stride)
    check_positive_int(fn, "padding", padding, minimum=0)
    if padding > kernel_size // 2:
        raise fail(fn, "padding", f"at most kernel_size // 2 = {kernel_size // 2}", padding)
    if min(x.shape[1:3]) + 2 * padding < kernel_size:
        raise fail(fn, "x", f"spatial size + 2 * padding >= kernel_size = {kernel_size}",
                   f"shape {tuple(x.shape)}")
    # The window sum and its divisor, as flax.linen.avg_pool computes them (written with
    # lax here so that functional does not load flax.linen).
    window, strides = (1, kernel_size, kernel_size, 1), (1, stride, stride, 1)
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    total = jax.lax.reduce_window(x.astype(acc_dtype(x)), 0.0, jax.lax.add, window, strides, pads)
    if count_include_pad:
        pooled = total / (kernel_size * kernel_size)
    else:
        ones = jnp.ones((1, *x.shape[1:3], 1), total.dtype)
        pooled = total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    return pooled.astype(x.dtype)


def _adaptive_weights(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix of PyTorch's adaptive pooling bins:
    bin i covers [floor(i * size / out), ceil((i + 1) * size / out))."""
    w = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        w[i, lo:hi] = 1.0 / (hi - lo)
    return w


@batch_dims(x=NHWC)
def adaptive_avg_pool2d(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """Average pooling to a fixed output size, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Same bins as PyTorch (bin i spans rows ``floor(i * H / Ho)`` to ``ceil((i + 1) * H / Ho)``,
    overlapping when ``H`` is not a multiple of ``Ho``; an output larger than the input repeats
    rows). Computed as two small averaging matrices, accumulated in float32 for bf16/fp16.

    Args:
      x: (N, H, W, C) feature map.
      output_size: Ho (square) or (Ho, Wo), each >= 1.

    Returns:
      (N, Ho, Wo, C), dtype of ``x``.
    """
    fn = "adaptive_avg_pool2d"
    check_nhwc(fn, "x", x)
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise fail(fn, "output_size", "an int or a pair (Ho, Wo)", repr(output_size))
    for v in size:
        check_positive_int(fn, "output_size", v)
    if 0 in x.shape[1:3]:
        raise fail(fn, "x", "H, W >= 1", f"shape {tuple(x.shape)}")
    acc = acc_dtype(x)
    wh = jnp.asarray(_adaptive_weights(x.shape[1], size[0]), acc)
    ww = jnp.asarray(_adaptive_weights(x.shape[2], size[1]), acc)
    out = jnp.einsum("ih,nhwc,jw->nijc", wh, x.astype(acc), ww,
                     precision=jax.lax.Precision.HIGHEST)
    return out.astype(x.dtype)


@batch_dims(x=NHWC)
def covariance_pool(x: jax.Array) -> jax.Array:
    """Global covariance pooling: the C x C covariance of the H*W pixel features.

    Dai et al., "Second-order Attention Network for Single Image Super-Resolution", CVPR 2019
    (SOCA), after MPN-COV: ``Sigma = X_c^T X_c / (H*W)`` with ``X_c`` the centred (H*W, C)
    features (biased, divided by H*W as the official ``CovpoolLayer``). Accumulated in float32 and
    returned in float32 for bf16/fp16 input: covariances of |x| ~ 1e4 (~1e8) overflow float16.

    Args:
      x: (N, H, W, C) feature map.

    Returns:
      (N, C, C) symmetric positive semi-definite; dtype ``promote_types(x.dtype, float32)``.
    """
    check_nhwc("covariance_pool", "x", x)
    n, h, w, c = x.shape
    feats = x.astype(acc_dtype(x)).reshape(n, h * w, c)
    centred = feats - jnp.mean(feats, axis=1, keepdims=True)
    return jnp.einsum("npc,npd->ncd", centred, centred, precision=_HIGHEST) / max(h * w, 1)


def newton_schulz_sqrt(a: jax.Array, *, iterations: int = 5, eps: float = 1e-12) -> jax.Array:
    """Matrix square root of symmetric PSD matrices by coupled Newton-Schulz iteration.

    iSQRT-COV / MPN-COV as used by SOCA (Dai et al., CVPR 2019; official SAN code uses 5
    iterations): pre-normalise by the trace, iterate ``T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z``
    from ``Y = A / tr(A), Z = I``, post-compensate by ``sqrt(tr(A))``. Only matrix products, so
    it is differentiable everywhere and stable for rank-deficient input (zero eigenvalues stay
    zero). The trace is floored at ``eps``, so an all-zero matrix (a constant feature map) gives
    zeros with finite gradients. Computed in at least float32.

    Args:
      a: (..., C, C) symmetric positive semi-definite matrices.
      iterations: number of Newton-Schulz steps (>= 1).
      eps: floor of the trace normaliser.

    Returns:
      (..., C, C) approximate square roots; dtype ``promote_types(a.dtype, float32)``.
    """
    fn = "newton_schulz_sqrt"
    check_rank(fn, "a", a, tuple(range(2, 9)), "(..., C, C)")
    if a.shape[-1] != a.shape[-2]:
        raise fail(fn, "a", "square in its last two axes (..., C, C)", f"shape {tuple(a.shape)}")
    check_positive_int(fn, "iterations", iterations)
    if not (isinstance(eps, (int, float)) and 0 < eps < float("inf")):
        raise fail(fn, "eps", "a positive finite number", repr(eps))
    a = a.astype(acc_dtype(a))
    c = a.shape[-1]
    eye = jnp.eye(c, dtype=a.dtype)
    norm = jnp.maximum(jnp.trace(a, axis1=-2, axis2=-1), eps)[..., None, None]
    y = a / norm
    z = jnp.broadcast_to(eye, a.shape)
    mm = lambda p, q: jnp.matmul(p, q, precision=_HIGHEST)  # noqa: E731
    for _ in range(iterations - 1):
        t = 0.5 * (3.0 * eye - mm(z, y))
        y, z = mm(y, t), mm(t, z)
    y = 0.5 * mm(y, 3.0 * eye - mm(z, y))
    return y * jnp.sqrt(norm)
