"""``conv_general_dilated``: ``lax.conv_general_dilated`` with faster forms on XLA:CPU.

A drop-in for Flax's ``nn.Conv(..., conv_general_dilated=conv_general_dilated)`` and
``nnx.Conv(..., conv_general_dilated=conv_general_dilated)``: same call signature, same result
to float32 rounding, same gradients. When compiling for the CPU it rewrites the kinds of
convolution that XLA:CPU runs slowly (below); every other backend (GPU, TPU) gets
``lax.conv_general_dilated`` itself, chosen by ``jax.lax.platform_dependent`` at lowering.

Why (XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK as pad + im2col view + matmul):

* **Grouped convolutions** (``feature_group_count = G > 1``). The forward is one YNNPACK
  matmul batched over groups, 3-5x slower than G ungrouped convolutions of the same total work;
  its filter gradient is lowered by XLA as a convolution with a dilated batch window that
  YNNPACK does not take, so it runs in XLA's generic loop emitter, 20-90x slower than the same
  gradient written per group. Here a grouped convolution is G ordinary convolutions on the
  channel slices, concatenated: same arithmetic, one well-shaped matmul per group, and autodiff
  gives per-group gradients that run in YNNPACK too.
* **Dilated convolutions whose taps mostly read padding** (ASPP's rates 12 and 18 on small
  maps). XLA:CPU pads the input and runs every tap over the padded map, so its time grows with
  the padded area ((28 + 2 * 18)^2 = 5.2x the map at rate 18) while the useful work shrinks;
  oneDNN (PyTorch) skips the taps that only read padding. Here the output is cut into regions
  (per spatial axis: the bands of outputs that see the same run of valid taps), each region is
  a convolution with only its valid taps over the crop of the input it reads (the crop given
  as negative padding, which YNNPACK folds into its packing; a slice would be a separate copy),
  and the regions are concatenated: the minimum arithmetic of the convolution. Reverse mode is
  by regions too: the input gradient of a stride-1 convolution is a convolution with the same
  sparsity (flipped kernel), and the filter gradient is one small convolution per region. Used
  for stride 1 when less than ``MIN_USEFUL_TAPS`` of the (output, tap) pairs read the input.

* **Small convolutions** (at most ``SMALL_CHANNELS`` channels in and out, at least
  ``MIN_PATCH_OUT`` out: the STN localisation net). XLA:CPU keeps them from YNNPACK and runs
  its generic convolution loop; here they are patches (one strided crop of the padded input
  per tap, side by side) times the flattened kernel: one matmul that YNNPACK takes.
* **Convolutions with very few channels** (2-D, at most ``FEW_CHANNELS`` in and out, stride 1:
  CBAM's 7x7 two-channels-in, one-out spatial gate, BAM's dilated 4 -> 4 convolutions). XLA:CPU
  runs them in its generic loop too (CBAM's gate at 6-9x PyTorch's forward), and patches do
  not pay with so few outputs. Here they are one matmul against a banded kernel: the input's
  rows for each kernel row, side by side, times a matrix that holds the kernel on diagonals
  (``BAND_BLOCK`` output columns at a time). It multiplies zeros (the band's width over the
  kernel's), but as one matmul it runs 2.5-4x faster than XLA's convolution forward and
  forward+backward, and its result is a matmul's, which XLA keeps in memory. A sum of the
  shifted crops, one elementwise loop, was faster still alone (4-10x forward), but XLA:CPU
  fuses a loop into each of its consumers and drops ``optimization_barrier`` before fusion:
  after a BatchNorm in training the 98-term sum ran once per statistic and per gradient
  (CBAM's spatial gate in training: forward+backward 2.5x slower than XLA's convolution).

* **Pointwise (1x1) convolutions** (every kernel size 1, no padding, a map of more than one
  pixel: the projections of the self-attention blocks, ASPP's 1x1 branch and projection,
  GC's and BAM's 1x1 convolutions over the map).
  XLA:CPU runs them as convolutions, 2-3.5x slower forward than the matmul they are, and their
  filter gradient 6x slower (Intel Xeon, (32, 28, 28, 320) -> 64: forward 13.4 -> 3.8 ms,
  forward+backward 116 -> 19 ms; PyTorch's 14 / 34). Here they are that matmul, on the pixels
  as rows ((N*H*W, Cin) times (Cin, Cout); a stride is a strided slice first).
* **Few outputs over few output pixels** (at most ``SMALL_CHANNELS`` outputs from more
  inputs, at most ``TAP_GRAD_MAX_ROWS`` output pixels over the batch: PFANet's 64 -> 16
  branches at batch 1). The forward and the input gradient are XLA's convolution, which runs
  them well; XLA:CPU's filter gradient of such a convolution ran 8-13x slower than the
  forward. Here a custom JVP writes the kernel's tangent as one matmul per tap (the crop of the
  input that tap reads, times that tap's slice of the kernel), so reverse mode computes the
  filter gradient as one matmul per tap over the output pixels.

Everything else (no groups and dense taps, ``lhs_dilation`` (transposed convolutions),
``batch_group_count``, an ``out_sharding``) calls ``lax.conv_general_dilated`` directly.

These forms were chosen with XLA's default runtime for convolutions (YNNPACK). Which runtime
runs them is a per-program choice of the caller: ``attention_jax.cpu_compiler_options``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["conv_general_dilated"]

MAX_SPLIT_GROUPS = 32
"""Grouped convolutions with at most this many groups are split per group on the CPU.

Measured on an AMD EPYC Zen 5 (28x28 maps, batch 8): the split form is faster forward and
forward+backward at G = 2, 4 and 32 (4 channels per group). Beyond 32 (depthwise-like), one
program would hold hundreds of small convolutions; those stay with XLA.
"""

SMALL_CHANNELS = 16
"""Convolutions with at most this many input and output channels (per group), and at least
``MIN_PATCH_OUT`` outputs, run as patches and one matmul on the CPU: XLA:CPU does not give
them to YNNPACK (its overhead rule) and runs them in its generic convolution loop. The patch
matrix is small exactly because the channels are (at most ``MAX_PATCH_ELEMENTS``). The STN
localisation net's 1 -> 8 and 8 -> 16 convs: 0.70-0.77x forward, 0.72-0.91x forward+backward
(batch 1-32, CPU time, AMD Zen 5)."""

MIN_PATCH_OUT = 8
"""The patch form needs this many output channels to repay building the patches (each patch
element feeds ``Cout`` multiply-adds): with CBAM's 2 -> 1 7x7 gate it was 1.5x slower at batch
32, with BAM's 4 -> 4 dilated convs 1.14x; from 8 outputs (YNNPACK's own minimum matmul size)
it was faster."""

MAX_PATCH_ELEMENTS = 2**24
"""Largest patch matrix (elements) the small-channel form builds; above it XLA's own conv."""

FEW_CHANNELS = 4
"""2-D ungrouped stride-1 convolutions with at most this many input and output channels (and
more than one tap) run as a matmul against a banded kernel on the CPU (module docstring).
Measured on an AMD EPYC Zen 5 (2 cores; XLA's convolution -> the band, ms, forward and
forward+backward of a sigmoid of the output): CBAM's 2 -> 1 7x7 at batch 8, 28x28: 0.60 ->
0.23 and 1.33 -> 0.32; batch 32: 2.2 -> 0.48 and 4.0 -> 0.87; batch 64, 40x40: 6.4 -> 1.8
and 12.8 -> 2.3; batch 2, 224x224: 4.7 -> 1.7 and 11.0 -> 4.0; BAM's 4 -> 4 3x3 dilation 4,
batch 32, 28x28: 0.81 -> 0.55 and 1.9 -> 1.2. With more channels XLA's own was faster (batch
8, 3x3, forward: 8 -> 1 0.19 against 0.27 ms, 16 -> 1 0.29 against 0.47, 6 -> 6 0.25 against
0.40), so both channel counts are bounded."""

BAND_BLOCK = 64
"""Output columns per block of the banded form. Each block reads its columns plus the kernel's
reach and multiplies a (kh * (block + reach) * Cin, block * Cout) band, so the work per output
grows with the block; 32 was slower than 64 at 40 columns (two blocks, one mostly padding),
one block for every width was 1.8x slower at 224 columns."""

MIN_USEFUL_TAPS = 0.6
"""A stride-1 dilated convolution is computed by regions when fewer than this share of its
(output position, tap) pairs read the input rather than padding.

ASPP on a 28x28 map: rate 6 reads the input at 74% of its tap-positions, rate 12 at 51%, rate
18 at 33%. Forward, batch 32, 64 -> 64 channels, CPU time on one core of an AMD EPYC Zen 5:
XLA's padded convolution 9.4 / 10.2 / 25.4 ms (rate 1: 9.4 ms), the regions 11.5 / 8.4 /
5.3 ms. The regions run ~0.75x as efficiently per useful tap (9 smaller matmuls and a
concatenation), so they pay off below ~0.6-0.7 useful.
"""

TAP_GRAD_MAX_ROWS = 2048
"""An ungrouped 2-D convolution with at most ``SMALL_CHANNELS`` outputs (and more inputs, else
the patch form applies) takes its filter gradient as per-tap matmuls on the CPU when it has at
most this many output pixels over the batch (N * Ho * Wo).

XLA:CPU's filter gradient of a convolution with 16 or fewer outputs runs far below the
forward's speed at small batches: 64 -> 16 channels, 3x3, 28x28, batch 1, dilation 1 / 3 / 7:
forward 0.22-0.27 ms, input gradient 0.23 ms, filter gradient 2.1-3.5 ms; with 32 or more
outputs it runs at the forward's speed (0.64 ms at 64 -> 32). One matmul per tap
((Cin, N*Ho*Wo) times (N*Ho*Wo, Cout)) takes 0.6-0.9 ms. Forward+backward of a tanh of the
convolution, XLA's -> per-tap (AMD EPYC Zen 4, 2 cores, 2026-12-02, ms): batch 1 (784 pixels)
3.2 -> 1.7 (dilation 3), 4.6 -> 1.6 (7), 4.9 -> 1.5 (1); batch 2 3.9 -> 2.1, 5.0 -> 3.2,
6.4 -> 4.5; batch 4 even (4.3 / 4.6, 6.8 / 4.7, 7.2 / 7.1); batch 8 XLA's faster (7.1 / 10.2).
Hence the bound, between batch 2 and 4 of a 28x28 map.
"""


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated``, rewritten for XLA:CPU where that measures faster.

    Same arguments and result as ``jax.lax.conv_general_dilated`` (any rank, any
    ``dimension_numbers``, string or explicit padding, strides, dilations, groups, dtypes,
    ``precision``, ``preferred_element_type``), differentiable to any order, and usable under
    ``jit``, ``vmap`` and ``grad``. On the CPU a grouped convolution (2 to ``MAX_SPLIT_GROUPS``
    groups) runs as one convolution per group, a dilated convolution whose taps mostly read
    padding as one convolution per output region over its crop, a small-channel one as patches
    times one matmul, one with very few channels as a matmul against a banded kernel, and one
    with few outputs over few output pixels is XLA's convolution with its filter gradient as
    one matmul per tap (see the module docstring); on other backends, and for every other
    convolution, this is ``lax.conv_general_dilated``.

    Args:
      lhs: input, e.g. (N, H, W, Cin) with ``dimension_numbers=("NHWC", "HWIO", "NHWC")``.
      rhs: kernel, e.g. (kh, kw, Cin / groups, Cout).
      window_strides: one stride per spatial axis.
      padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` or one ``(low, high)`` per spatial axis.
      lhs_dilation: input dilation per spatial axis (transposed convolution), default none.
      rhs_dilation: kernel dilation per spatial axis (atrous convolution), default none.
      dimension_numbers: as ``lax.conv_general_dilated`` (default NCHW / OIHW / NCHW).
      feature_group_count: number of feature groups G (Cin and Cout divisible by G).
      batch_group_count: number of batch groups (left to XLA when > 1).
      precision: ``lax.Precision`` or a pair, as ``lax.conv_general_dilated``.
      preferred_element_type: accumulation/result dtype, as ``lax.conv_general_dilated``.
      out_sharding: output sharding, as ``lax.conv_general_dilated`` (left to XLA when set).

    Returns:
      The convolution, with the shape and dtype ``lax.conv_general_dilated`` gives.
    """
    kwargs = dict(window_strides=tuple(window_strides), padding=padding,
                  lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                  dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                  batch_group_count=batch_group_count, precision=precision,
                  preferred_element_type=preferred_element_type)
    if out_sharding is not None:
        return lax.conv_general_dilated(lhs, rhs, **kwargs, out_sharding=out_sharding)
    plan = _cpu_plan(lhs, rhs, **kwargs)
    if plan is None:
        return lax.conv_general_dilated(lhs, rhs, **kwargs)
    default = functools.partial(lax.conv_general_dilated, **kwargs)
    return lax.platform_dependent(lhs, rhs, cpu=plan, default=default)


# ------------------------------------------------------------------------------------------
# The plan: which form, from static shapes only.
# ------------------------------------------------------------------------------------------


def _cpu_plan(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count, precision,
              preferred_element_type):
    """The CPU form as a function ``(lhs, rhs) -> out``, or None when XLA's own is kept."""
    nsp = lhs.ndim - 2
    if nsp < 1 or batch_group_count != 1 or len(window_strides) != nsp:
        return None
    if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
        return None
    dil = (1,) * nsp if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    if len(dil) != nsp:
        return None
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    in_sp = [lhs.shape[a] for a in dn.lhs_spec[2:]]
    k_sp = [rhs.shape[a] for a in dn.rhs_spec[2:]]
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(k_sp, dil, strict=True)]
        pads = [tuple(p) for p in lax.padtype_to_pads(in_sp, eff, window_strides, padding)]
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != nsp:
        return None
    groups = int(feature_group_count)
    cin, cout = lhs.shape[dn.lhs_spec[1]], rhs.shape[dn.rhs_spec[0]]
    if cin % groups or cout % groups or rhs.shape[dn.rhs_spec[1]] * groups != cin:
        return None  # lax.conv_general_dilated raises its own error
    same_dtype = lhs.dtype == rhs.dtype and preferred_element_type in (None, lhs.dtype)
    if (math.prod(k_sp) == 1 and all(p == (0, 0) for p in pads) and same_dtype
            and math.prod(in_sp) > 1 and groups <= MAX_SPLIT_GROUPS):
        # Pointwise: a matmul over the pixels (grouped: one per group). Not on a one-pixel
        # map (the gates' fully connected layers on pooled vectors): there XLA's convolution
        # is as fast alone, and in PFANet's and split attention's gates the matmul made the
        # module's forward+backward 5-10% slower (batch 32, Intel Xeon, 2026-12-02).
        point = functools.partial(_pointwise, strides=tuple(window_strides), dn=dn,
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)
        return point if groups == 1 else functools.partial(_split_groups, groups=groups,
                                                           dn=dn, conv=point)
    bands = [_bands(n, k, s, d, p)
             for n, k, s, d, p in zip(in_sp, k_sp, window_strides, dil, pads, strict=True)]
    sparse = _useful_share(bands, k_sp) < MIN_USEFUL_TAPS
    # Regions only for stride 1 (the adjoint is then a convolution too) and one dtype (the
    # adjoint maps the result's dtype back to the input's).
    use_regions = bands if sparse and same_dtype and all(s == 1 for s in window_strides) else None
    out_sp = [(b[-1][1] if b else 0) for b in bands]
    # Very few channels: one matmul against a banded kernel (see FEW_CHANNELS).
    if (nsp == 2 and groups == 1 and cin <= FEW_CHANNELS and cout <= FEW_CHANNELS
            and math.prod(k_sp) > 1 and all(s == 1 for s in window_strides)
            and all(n > 0 for n in out_sp) and lhs.dtype in (jnp.float32, jnp.float64)
            and same_dtype):
        return functools.partial(_band, pads=tuple(map(tuple, pads)), dil=dil, dn=dn,
                                 block=BAND_BLOCK)
    # Small channel counts (per group): patches and one matmul (see SMALL_CHANNELS).
    n_patch = lhs.shape[dn.lhs_spec[0]] * math.prod(out_sp) * math.prod(k_sp) * cin // groups
    small = (nsp == 2 and max(cin, cout) // groups <= SMALL_CHANNELS and math.prod(k_sp) > 1
             and cout // groups >= MIN_PATCH_OUT
             and lhs.dtype in (jnp.float32, jnp.float64) and same_dtype
             and 0 < n_patch <= MAX_PATCH_ELEMENTS and use_regions is None)
    common = dict(window_strides=tuple(window_strides), rhs_dilation=dil,
                  dimension_numbers=dn, precision=precision,
                  preferred_element_type=preferred_element_type)
    # Few outputs over few pixels: XLA's convolution, the filter gradient by per-tap matmuls
    # (see TAP_GRAD_MAX_ROWS).
    rows = lhs.shape[dn.lhs_spec[0]] * math.prod(out_sp)
    if (nsp == 2 and groups == 1 and cout <= SMALL_CHANNELS < cin and math.prod(k_sp) > 1
            and 0 < rows <= TAP_GRAD_MAX_ROWS and lhs.dtype in (jnp.float32, jnp.float64)
            and same_dtype and use_regions is None):
        return functools.partial(_tap_grad, pads=tuple(map(tuple, pads)),
                                 kw_items=tuple(sorted(common.items(), key=lambda kv: kv[0])))
    if not (2 <= groups <= MAX_SPLIT_GROUPS) and use_regions is None and not small:
        return None
    one_group = functools.partial(_conv_one_group, pads=pads, bands=use_regions, patches=small,
                                  **common)
    if 2 <= groups <= MAX_SPLIT_GROUPS:
        return functools.partial(_split_groups, groups=groups, dn=dn, conv=one_group)
    if groups != 1:  # many groups: XLA's grouped convolution, nothing to gain by regions here
        return None
    return one_group


def _bands(n_in: int, k: int, stride: int, dil: int, pad: tuple[int, int]):
    """Output bands along one spatial axis: ``(lo, hi, k_lo, k_hi)`` with outputs ``lo..hi-1``
    all reading taps ``k_lo..k_hi-1`` (and only those) inside the input (``k_hi <= k_lo``: no
    tap reads the input, the band is zero). Output ``y`` reads input ``y*stride + t*dil - pad[0]``.
    """
    n_out = (n_in + pad[0] + pad[1] - (k - 1) * dil - 1) // stride + 1
    if n_out <= 0:
        return []

    def first_valid(t):  # smallest y with y*stride + t*dil - pad0 >= 0
        return max(0, -((t * dil - pad[0]) // stride))

    def end_valid(t):  # one past the largest y with y*stride + t*dil - pad0 <= n_in - 1
        return max(0, min(n_out, (n_in - 1 - t * dil + pad[0]) // stride + 1))

    cuts = {0, n_out}
    for t in range(k):
        cuts.update((min(first_valid(t), n_out), end_valid(t)))
    cuts = sorted(cuts)
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        if hi <= lo:
            continue
        taps = [t for t in range(k) if first_valid(t) <= lo and hi <= end_valid(t)]
        out.append((lo, hi, taps[0], taps[-1] + 1) if taps else (lo, hi, 0, 0))
    return out


def _useful_share(bands, k_sp) -> float:
    """Share of (output position, tap) pairs that read the input (the rest read padding)."""
    share = 1.0
    for axis_bands, k in zip(bands, k_sp, strict=True):
        n_out = sum(hi - lo for lo, hi, _, _ in axis_bands)
        if n_out == 0:
            return 1.0
        share *= sum((hi - lo) * max(0, kb - ka) for lo, hi, ka, kb in axis_bands) / (n_out * k)
    return share


# ------------------------------------------------------------------------------------------
# The forms.
# ------------------------------------------------------------------------------------------


def _split_groups(lhs, rhs, *, groups, dn, conv):
    """G convolutions on the channel slices, concatenated along the output feature axis."""
    lf, rf, of = dn.lhs_spec[1], dn.rhs_spec[0], dn.out_spec[1]
    ci, co = lhs.shape[lf] // groups, rhs.shape[rf] // groups
    outs = [conv(lax.slice_in_dim(lhs, g * ci, (g + 1) * ci, axis=lf),
                 lax.slice_in_dim(rhs, g * co, (g + 1) * co, axis=rf)) for g in range(groups)]
    return lax.concatenate(outs, of)


def _conv_one_group(lhs, rhs, *, pads, bands, patches, window_strides, rhs_dilation,
                    dimension_numbers, precision, preferred_element_type):
    """One ungrouped convolution: XLA's, by regions (``bands``) or by ``patches``."""
    kw = dict(rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              precision=precision, preferred_element_type=preferred_element_type)
    if patches:
        return _patches_conv(lhs, rhs, window_strides, pads, **kw)
    if bands is None:
        return lax.conv_general_dilated(lhs, rhs, window_strides, pads, **kw)
    return _regions_conv(lhs, rhs, tuple(map(tuple, pads)), tuple(map(tuple, bands)),
                         tuple(sorted(kw.items(), key=lambda kv: kv[0])))


def _nhwc(lhs, rhs, dn):
    """The input as (N, H, W, C) and the kernel as (kh, kw, I, O), from ``dn``'s layouts."""
    return (jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])),
            jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])))


def _from_nhwc(out, dn):
    """An (N, Ho, Wo, O) result in the output layout of ``dn``."""
    perm = [0] * out.ndim
    for src, dst in enumerate((dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1])):
        perm[dst] = src
    return jnp.transpose(out, perm)


def _pointwise(lhs, rhs, *, strides, dn, precision, preferred_element_type):
    """A convolution with a kernel of size 1 and no padding as one matmul over the pixels:
    (N * prod(spatial'), Cin) times (Cin, Cout), after a strided slice when ``strides`` > 1."""
    x, w = _nhwc(lhs, rhs, dn)
    if any(st != 1 for st in strides):
        x = lax.slice(x, (0,) * x.ndim, x.shape, (1, *strides, 1))
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    out = lax.dot_general(rows, w.reshape(w.shape[-2], w.shape[-1]), (((1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
    return _from_nhwc(out.reshape(*x.shape[:-1], w.shape[-1]), dn)


def _patches_conv(lhs, rhs, strides, pads, *, rhs_dilation, dimension_numbers, precision,
                  preferred_element_type):
    """A 2-D convolution as one matmul: (N, Ho, Wo, kh*kw*Cin) patches (strided crops of the
    padded input, one per tap, side by side) times the (kh*kw*Cin, Cout) kernel."""
    dn = dimension_numbers
    x, w = _nhwc(lhs, rhs, dn)
    taps = _tap_crops(x, w.shape[:2], strides, pads, rhs_dilation)
    out = lax.dot_general(lax.concatenate(taps, 3), w.reshape(-1, w.shape[-1]),
                          (((3,), (0,)), ((), ())), precision=precision,
                          preferred_element_type=preferred_element_type)  # N, Ho, Wo, O
    return _from_nhwc(out, dn)


def _tap_crops(x, k_sp, strides, pads, dil):
    """The (N, Ho, Wo, C) crop of the zero-padded (N, H, W, C) ``x`` that each tap of a 2-D
    kernel reads (strided), taps in row-major order."""
    n, c = x.shape[0], x.shape[-1]
    (kh, kw), (sh, sw), (dh, dw) = k_sp, strides, dil
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
    ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    return [lax.slice(x, (0, i * dh, j * dw, 0),
                      (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _tap_products(lhs, rhs, pads, kw):
    """A 2-D convolution as a sum over taps of (the crop that tap reads) times (that tap's
    (Cin, Cout) kernel slice): linear in ``rhs``, and its transpose in ``rhs`` (the filter
    gradient) is one matmul per tap, (Cin, N*Ho*Wo) times (N*Ho*Wo, Cout)."""
    dn = kw["dimension_numbers"]
    x, w = _nhwc(lhs, rhs, dn)
    crops = _tap_crops(x, w.shape[:2], kw["window_strides"], pads, kw["rhs_dilation"])
    out = None
    for crop, w_t in zip(crops, w.reshape(-1, *w.shape[2:]), strict=True):
        term = lax.dot_general(crop, w_t, (((3,), (0,)), ((), ())), precision=kw["precision"],
                               preferred_element_type=kw["preferred_element_type"])
        out = term if out is None else out + term
    return _from_nhwc(out, dn)


def _tap_grad(lhs, rhs, *, pads, kw_items):
    """XLA's convolution, whose filter gradient is per-tap matmuls (see TAP_GRAD_MAX_ROWS)."""
    return _tap_grad_conv(lhs, rhs, pads, kw_items)


def _xla_conv(lhs, rhs, pads, kw):
    kw = dict(kw)
    return lax.conv_general_dilated(lhs, rhs, kw.pop("window_strides"), pads, **kw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _tap_grad_conv(lhs, rhs, pads, kw_items):
    return _xla_conv(lhs, rhs, pads, kw_items)


@_tap_grad_conv.defjvp
def _tap_grad_conv_jvp(pads, kw_items, primals, tangents):
    # Linear in each argument. The input tangent is XLA's convolution (its transpose, the input
    # gradient, is XLA's too, and fast); the kernel tangent is the per-tap products, whose
    # transpose is the per-tap filter gradient.
    lhs, rhs = primals
    dlhs, drhs = tangents
    out = _xla_conv(lhs, rhs, pads, kw_items)
    return out, _xla_conv(dlhs, rhs, pads, kw_items) + _tap_products(lhs, drhs, pads,
                                                                      dict(kw_items))


def _regions(lhs, rhs, pads, bands, kw):
    """A stride-1 convolution as one convolution per output region, each reading only the crop
    of ``lhs`` its valid taps touch (``bands``: per spatial axis, from ``_bands``)."""
    dn = kw["dimension_numbers"]
    dil = kw["rhs_dilation"]
    nsp = len(pads)

    def region(idx):  # idx: one band per spatial axis
        # The crop is negative padding rather than a slice: XLA:CPU's slice is a separate copy
        # (2.2 GB/s measured), while YNNPACK folds (negative) padding into its input packing.
        crop = []
        rhs_start = [0] * rhs.ndim
        rhs_limit = list(rhs.shape)
        for i, (lo, hi, ka, kb) in enumerate(idx):
            n_in = lhs.shape[dn.lhs_spec[2 + i]]
            first = lo + ka * dil[i] - pads[i][0]
            last = hi - 1 + (kb - 1) * dil[i] - pads[i][0]
            crop.append((-first, last + 1 - n_in))
            ra = dn.rhs_spec[2 + i]
            rhs_start[ra], rhs_limit[ra] = ka, kb
        w = lax.slice(rhs, rhs_start, rhs_limit)
        return lax.conv_general_dilated(lhs, w, (1,) * nsp, crop, **kw)

    def zeros(idx):
        shape = [0] * lhs.ndim
        shape[dn.out_spec[0]] = lhs.shape[dn.lhs_spec[0]]
        shape[dn.out_spec[1]] = rhs.shape[dn.rhs_spec[0]]
        for i, (lo, hi, _, _) in enumerate(idx):
            shape[dn.out_spec[2 + i]] = hi - lo
        dtype = kw["preferred_element_type"] or jnp.result_type(lhs, rhs)
        return jnp.zeros(shape, dtype)

    def build(axis, idx):  # concatenate regions axis by axis, innermost last
        if axis == nsp:
            return region(idx) if all(kb > ka for _, _, ka, kb in idx) else zeros(idx)
        parts = [build(axis + 1, idx + (b,)) for b in bands[axis]]
        return parts[0] if len(parts) == 1 else lax.concatenate(parts, dn.out_spec[2 + axis])

    return build(0, ())


def _adjoint(lhs_shape, rhs, pads, kw):
    """The input-gradient map of a stride-1 convolution as a function ``dy -> dx``: itself a
    stride-1 convolution (the kernel flipped, its in/out features swapped, padding
    ``(k_eff - 1 - low, ...)``), with the same sparsity, so run by regions too when sparse."""
    dn = kw["dimension_numbers"]
    dil = kw["rhs_dilation"]
    nsp = len(pads)
    spatial = dn.rhs_spec[2:]
    k_sp = [rhs.shape[a] for a in spatial]
    n_in = [lhs_shape[a] for a in dn.lhs_spec[2:]]
    n_out = [n + lo + hi - (k - 1) * d for n, (lo, hi), k, d in zip(n_in, pads, k_sp, dil,
                                                                    strict=True)]
    adj_pads = []
    for i in range(nsp):
        low = (k_sp[i] - 1) * dil[i] - pads[i][0]
        adj_pads.append((low, n_in[i] - n_out[i] - low + (k_sp[i] - 1) * dil[i]))
    adj_dn = lax.ConvDimensionNumbers(lhs_spec=dn.out_spec,
                                      rhs_spec=(dn.rhs_spec[1], dn.rhs_spec[0], *spatial),
                                      out_spec=dn.lhs_spec)
    adj_kw = {**kw, "dimension_numbers": adj_dn}
    adj_rhs = lax.rev(rhs, spatial)
    bands = [_bands(n, k, 1, d, p) for n, k, d, p in zip(n_out, k_sp, dil, adj_pads, strict=True)]
    if _useful_share(bands, k_sp) < MIN_USEFUL_TAPS:
        return lambda dy: _regions(dy, adj_rhs, adj_pads, bands, adj_kw)
    return lambda dy: lax.conv_general_dilated(dy, adj_rhs, (1,) * nsp, adj_pads, **adj_kw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _regions_conv(lhs, rhs, pads, bands, kw_items):
    """``_regions`` with derivatives whose reverse mode is regions too (see the JVP rule)."""
    return _regions(lhs, rhs, pads, bands, dict(kw_items))


@_regions_conv.defjvp
def _regions_conv_jvp(pads, bands, kw_items, primals, tangents):
    # Linear in each argument. The kernel tangent is the regions again: its transpose (the
    # filter gradient) is one small convolution per region over the crop, as XLA's filter
    # gradient would be without the padding. The input tangent is written as the transpose of
    # the adjoint (itself by regions), so that reverse mode, which transposes the tangent map,
    # runs the adjoint as written instead of transposing each region's convolution (each of
    # those is padded back to the whole input: the padded-area cost the regions avoid).
    # Forward mode pays that cost; it stays exact.
    lhs, rhs = primals
    dlhs, drhs = tangents
    kw = dict(kw_items)
    out = _regions(lhs, rhs, pads, bands, kw)
    adjoint = _adjoint(lhs.shape, rhs, pads, kw)
    (dx,) = jax.linear_transpose(adjoint, jax.ShapeDtypeStruct(out.shape, out.dtype))(dlhs)
    return out, dx + _regions(lhs, drhs, pads, bands, kw)


def _band(lhs, rhs, pads, dil, dn, block):
    """A stride-1 2-D convolution as one matmul against a banded kernel: the input's rows for
    each kernel row, side by side (N, Ho, kh, Wp, C), times B (kh, Wp, C, Wo, O) with
    ``B[i, v, c, w, o] = rhs[i, j, c, o]`` where ``v = w + j * dilation`` (zero elsewhere).
    Outputs are taken ``block`` columns at a time (each block reads its columns plus the
    kernel's reach, and all blocks share one B), which bounds the zeros B multiplies."""
    x, w = _nhwc(lhs, rhs, dn)  # (N, H, W, C), (kh, kw, C, O)
    (n, h, wi, c), (kh, kw), (dh, dw) = x.shape, w.shape[:2], dil
    ho = h + pads[0][0] + pads[0][1] - (kh - 1) * dh
    wo = wi + pads[1][0] + pads[1][1] - (kw - 1) * dw
    nb = -(-wo // block) if wo > block else 1
    wb = block if nb > 1 else wo  # outputs per block
    win = wb + (kw - 1) * dw  # input columns per block
    # the padding, widened on the right so that the last block is whole
    wpad = (pads[1][0], pads[1][1] + nb * wb - wo, 0)
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*pads[0], 0), wpad, (0, 0, 0)])
    rows = [lax.slice_in_dim(x, i * dh, i * dh + ho, axis=1) for i in range(kh)]
    cols = [lax.slice_in_dim(r, b * wb, b * wb + win, axis=2) for b in range(nb) for r in rows]
    xs = jnp.stack(cols, 2).reshape(n, ho, nb, kh, win, c)
    sel = np.zeros((kw, win, wb), np.float32)  # sel[j, v, w] = 1 where v = w + j * dw
    for j in range(kw):
        sel[j, np.arange(wb) + j * dw, np.arange(wb)] = 1
    band = jnp.einsum("ijco,jvw->ivcwo", w, jnp.asarray(sel, w.dtype))
    out = jnp.einsum("nhbivc,ivcwo->nhbwo", xs, band)
    return _from_nhwc(out.reshape(n, ho, nb * wb, w.shape[3])[:, :, :wo], dn)
