"""Random geometric distortions of image batches: the STN paper's MNIST variants.

Jaderberg et al., "Spatial Transformer Networks" (NeurIPS 2015), Sec. 4.1 distort MNIST several
ways: ``R`` rotation, ``RTS`` rotation-translation-scale in a larger canvas, ``P`` projective,
``E`` elastic, ``T`` translation in a 60x60 canvas and ``TC`` translation with clutter. Each
function here draws one random transform per image from ``key`` and warps the batch with the
library's own sampler (``attention_jax.functional.sampling``), so the same code builds the
datasets (``distorted_mnist``, ``digits``) and distorts training batches afresh on the fly.

All functions are pure (arrays in, arrays out), deterministic given ``key``, and jit-able;
images are NHWC floats; sampling grids stay float32. With ``return_params=True`` they also
return the parameters they drew (a dict of arrays, documented per function), so a dataset can
store them and a test can check their ranges.

Conventions of the parameters: positions and shifts are (x, y) in pixels, x to the right and y
down; angles are in degrees, counter-clockwise as displayed (``scipy.ndimage.rotate``'s sense).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from attention_jax._validation import check_choice, check_nhwc, check_positive_int, fail
from attention_jax.functional.sampling import (
    affine_grid,
    grid_sample,
    perspective_grid,
    tps_base_points,
    tps_grid,
)

__all__ = [
    "VARIANTS",
    "output_size",
    "random_rotation",
    "random_rts",
    "random_projective",
    "random_elastic",
    "random_translation",
    "random_clutter",
    "distort",
    "get_distortion",
]

VARIANTS: tuple[str, ...] = ("R", "RTS", "P", "E", "T", "TC")
"""The distortion variants of the STN paper's MNIST experiments (Table 1: R, RTS, P, E; Table 2:
T and TC)."""

_CANVAS = {"RTS": 42, "T": 60, "TC": 60}

Params = dict[str, jax.Array]


def output_size(variant: str, *, size: int = 28) -> int:
    """The side of a variant's output images for square inputs of side ``size``.

    Args:
      variant: one of ``VARIANTS``.
      size: side of the input images.

    Returns:
      42 for ``RTS``, 60 for ``T`` and ``TC`` (their canvases), else ``size``.
    """
    check_choice("output_size", "variant", variant, VARIANTS)
    return _CANVAS.get(variant, size)


def _warp(x: jax.Array, grid: jax.Array) -> jax.Array:
    out = grid_sample(x.astype(jnp.float32), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    return out.astype(x.dtype)


def _check_range(fn: str, arg: str, lo_hi: tuple[float, float]) -> None:
    lo, hi = lo_hi
    if not (0 < lo <= hi):
        raise fail(fn, arg, "a pair (low, high) with 0 < low <= high", repr(lo_hi))


def _check_non_negative(fn: str, arg: str, value: float) -> None:
    if not value >= 0:
        raise fail(fn, arg, "non-negative", repr(value))


def _rotation_matrix(angle_deg: jax.Array) -> jax.Array:
    """(N, 2, 2) sampler matrices (output -> input) that show the content rotated by +angle."""
    a = jnp.deg2rad(angle_deg)
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], 1)


def _result(out: jax.Array, params: Params, return_params: bool) -> Any:
    return (out, params) if return_params else out


def random_rotation(
    key: jax.Array, x: jax.Array, *, max_degrees: float = 90.0, return_params: bool = False
) -> jax.Array | tuple[jax.Array, Params]:
    """Rotate each image about its centre by an angle drawn uniformly in [-max, max] degrees.

    The ``R`` variant of the STN paper (max 90 degrees).

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      max_degrees: largest absolute rotation angle.
      return_params: also return ``{"angle": (N,)}`` (degrees, counter-clockwise).

    Returns:
      Rotated images (N, H, W, C), same dtype (pixels from outside the image are 0); with
      ``return_params`` a pair (images, params).
    """
    check_nhwc("random_rotation", "x", x)
    _check_non_negative("random_rotation", "max_degrees", max_degrees)
    n, h, w, _ = x.shape
    angle = jax.random.uniform(key, (n,), minval=-max_degrees, maxval=max_degrees)
    rot = _rotation_matrix(angle)
    # Normalised coordinates are isotropic only for square images: scale by the aspect ratio.
    aspect = jnp.asarray([[1.0, h / w], [w / h, 1.0]], jnp.float32)
    theta = jnp.concatenate([rot * aspect, jnp.zeros((n, 2, 1))], axis=2)
    out = _warp(x, affine_grid(theta, x.shape, align_corners=False))
    return _result(out, {"angle": angle}, return_params)


def random_rts(
    key: jax.Array,
    x: jax.Array,
    *,
    max_degrees: float = 45.0,
    scale: tuple[float, float] = (0.7, 1.2),
    canvas: int = 42,
    content: float = 20.0 / 28.0,
    return_params: bool = False,
) -> jax.Array | tuple[jax.Array, Params]:
    """Rotate, scale and place each image at a random position in a larger square canvas.

    The ``RTS`` variant of the STN paper: rotation in [-45, 45] degrees, scale in [0.7, 1.2],
    placed at a random location in a 42x42 canvas. The translation is drawn so that the scaled
    digit (its central ``content`` fraction, 20 of 28 pixels for MNIST-style digits) stays in the
    canvas.

    Args:
      key: PRNG key.
      x: square images (N, S, S, C), floating, S <= canvas.
      max_degrees: largest absolute rotation angle.
      scale: (low, high) range of the uniform scale factor.
      canvas: side of the square output canvas in pixels.
      content: fraction of the input side the object occupies (for the translation range).
      return_params: also return ``{"angle": (N,), "scale": (N,), "shift": (N, 2)}``: degrees
        counter-clockwise, scale factor, and the move of the digit's centre from the canvas
        centre in canvas pixels (x, y), each within ``(canvas - content * S * scale) / 2``.

    Returns:
      Distorted images (N, canvas, canvas, C), same dtype; with ``return_params`` a pair.
    """
    fn = "random_rts"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "canvas", canvas)
    _check_range(fn, "scale", scale)
    _check_non_negative(fn, "max_degrees", max_degrees)
    n, h, w, c = x.shape
    if h != w or h > canvas:
        raise fail(fn, "x", f"square images no larger than canvas={canvas}", f"shape {x.shape}")
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    angle = jax.random.uniform(k_rot, (n,), minval=-max_degrees, maxval=max_degrees)
    s = jax.random.uniform(k_scale, (n,), minval=scale[0], maxval=scale[1])
    # Maximal shift (in canvas pixels) that keeps the scaled content box inside the canvas.
    max_shift = jnp.maximum(canvas - content * h * s, 0.0) / 2.0
    shift = jax.random.uniform(k_shift, (n, 2), minval=-1.0, maxval=1.0) * max_shift[:, None]
    t = 2.0 * shift / canvas  # pixels -> normalised canvas coordinates
    # The image first sits at the canvas centre at its own size; then its content moves to
    # p = s R(-angle) q + t (as displayed, y down), so the sampler reads q = R(angle) (p - t) / s.
    pad = (canvas - h) // 2
    placed = jnp.pad(x, ((0, 0), (pad, canvas - h - pad), (pad, canvas - w - pad), (0, 0)))
    inv = _rotation_matrix(angle) / s[:, None, None]
    offset = -jnp.einsum("nij,nj->ni", inv, t)
    theta = jnp.concatenate([inv, offset[:, :, None]], axis=2)
    out = _warp(placed, affine_grid(theta, placed.shape, align_corners=False))
    return _result(out, {"angle": angle, "scale": s, "shift": shift}, return_params)


def _homography(src: jax.Array, dst: jax.Array) -> jax.Array:
    """The 3x3 matrix H (h33 = 1) with H [dst, 1] ~ [src, 1] for four point pairs (4, 2)."""
    rows, rhs = [], []
    for i in range(4):
        (u, v), (x, y) = dst[i], src[i]
        rows.append(jnp.stack([u, v, 1.0, 0.0, 0.0, 0.0, -x * u, -x * v]))
        rows.append(jnp.stack([0.0, 0.0, 0.0, u, v, 1.0, -y * u, -y * v]))
        rhs += [x, y]
    h = jnp.linalg.solve(jnp.stack(rows), jnp.stack(rhs))
    return jnp.concatenate([h, jnp.ones((1,), h.dtype)]).reshape(3, 3)


def random_projective(
    key: jax.Array,
    x: jax.Array,
    *,
    corner_std: float = 5.0,
    scale: tuple[float, float] = (0.75, 1.0),
    return_params: bool = False,
) -> jax.Array | tuple[jax.Array, Params]:
    """Warp each image by a random perspective transform.

    The ``P`` variant of the STN paper: the image is scaled about its centre by a factor drawn
    uniformly in ``scale``, then each of its four corners is moved independently by Gaussian
    noise of standard deviation ``corner_std`` pixels; the image is warped by the homography
    that takes its corners to the moved ones.

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      corner_std: standard deviation of each corner's displacement, in pixels.
      scale: (low, high) range of the uniform scale factor.
      return_params: also return ``{"scale": (N,), "corners": (N, 4, 2)}``: the scale and the
        corners' Gaussian moves in pixels (x, y), corners top-left, top-right, bottom-right,
        bottom-left.

    Returns:
      Distorted images (N, H, W, C), same dtype; with ``return_params`` a pair.
    """
    fn = "random_projective"
    check_nhwc(fn, "x", x)
    _check_range(fn, "scale", scale)
    _check_non_negative(fn, "corner_std", corner_std)
    n, h, w, _ = x.shape
    k_scale, k_noise = jax.random.split(key)
    corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], jnp.float32)
    s = jax.random.uniform(k_scale, (n,), minval=scale[0], maxval=scale[1])
    moves = corner_std * jax.random.normal(k_noise, (n, 4, 2))
    to_normalised = jnp.asarray([2.0 / w, 2.0 / h], jnp.float32)
    moved = corners * s[:, None, None] + moves * to_normalised
    # The sampler maps output -> input: output corners `moved` come from input `corners`.
    mats = jax.vmap(_homography, in_axes=(None, 0))(corners, moved)
    out = _warp(x, perspective_grid(mats, x.shape, align_corners=False))
    return _result(out, {"scale": s, "corners": moves}, return_params)


def random_elastic(
    key: jax.Array,
    x: jax.Array,
    *,
    control: int = 4,
    sigma: float = 1.5,
    return_params: bool = False,
) -> jax.Array | tuple[jax.Array, Params]:
    """Warp each image by a random thin-plate spline (elastic distortion).

    The ``E`` variant of the STN paper: a regular ``control`` x ``control`` lattice of control
    points spanning the image (16 for ``control=4``), each displaced by Gaussian noise of
    standard deviation ``sigma`` pixels in x and y; the thin-plate spline through the displaced
    points (``attention_jax.functional.tps_grid``) warps the image.

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      control: control points per side (>= 2).
      sigma: standard deviation of each control point's displacement, in pixels.
      return_params: also return ``{"displacement": (N, control**2, 2)}``: where each lattice
        point (row-major) reads the input, relative to itself, in pixels (x, y).

    Returns:
      Distorted images (N, H, W, C), same dtype; with ``return_params`` a pair.
    """
    fn = "random_elastic"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "control", control, minimum=2)
    _check_non_negative(fn, "sigma", sigma)
    n, h, w, _ = x.shape
    base = tps_base_points((control, control))
    disp = sigma * jax.random.normal(key, (n, control * control, 2))
    points = jnp.asarray(base) + disp * jnp.asarray([2.0 / w, 2.0 / h], jnp.float32)
    out = _warp(x, tps_grid(points, x.shape, base_points=base, align_corners=False))
    return _result(out, {"displacement": disp}, return_params)


def _check_canvas(fn: str, x: jax.Array, canvas: int) -> None:
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "canvas", canvas)
    if x.shape[1] != x.shape[2] or x.shape[1] > canvas:
        raise fail(fn, "x", f"square images no larger than canvas={canvas}", f"shape {x.shape}")


def _place(x: jax.Array, shift: jax.Array, canvas: int) -> jax.Array:
    """Paste each image (N, S, S, C) at the canvas centre moved by integer ``shift`` (N, 2)."""
    n, size, _, c = x.shape
    pad = (canvas - size) // 2
    # A border of `size` on every side keeps every paste in bounds (dynamic_update_slice would
    # clamp the position instead of cropping the image).
    buffer = jnp.zeros((canvas + 2 * size, canvas + 2 * size, c), x.dtype)

    def one(img, sx, sy):
        pasted = jax.lax.dynamic_update_slice(buffer, img, (size + pad + sy, size + pad + sx, 0))
        return pasted[size:size + canvas, size:size + canvas]

    return jax.vmap(one)(x, shift[:, 0], shift[:, 1])


def _integer_shift(key: jax.Array, n: int, size: int, canvas: int, content: float) -> jax.Array:
    max_shift = int((canvas - content * size) // 2)
    return jax.random.randint(key, (n, 2), -max_shift, max_shift + 1)


def random_translation(
    key: jax.Array,
    x: jax.Array,
    *,
    canvas: int = 60,
    content: float = 20.0 / 28.0,
    return_params: bool = False,
) -> jax.Array | tuple[jax.Array, Params]:
    """Place each image at a random integer position in a larger square canvas (no resampling).

    The ``T`` variant of the STN paper (60x60 canvas). The shift is drawn uniformly among the
    integer moves that keep the central ``content`` fraction of the image in the canvas.

    Args:
      key: PRNG key.
      x: square images (N, S, S, C), floating, S <= canvas.
      canvas: side of the output canvas in pixels.
      content: fraction of the input side the object occupies.
      return_params: also return ``{"shift": (N, 2)}``: int32 move of the image's centre from
        the canvas centre, pixels (x, y), each within ``(canvas - content * S) // 2``.

    Returns:
      Images (N, canvas, canvas, C), same dtype; with ``return_params`` a pair.
    """
    _check_canvas("random_translation", x, canvas)
    shift = _integer_shift(key, x.shape[0], x.shape[1], canvas, content)
    return _result(_place(x, shift, canvas), {"shift": shift}, return_params)


def random_clutter(
    key: jax.Array,
    x: jax.Array,
    *,
    canvas: int = 60,
    pieces: int = 4,
    piece_size: int = 6,
    content: float = 20.0 / 28.0,
    return_params: bool = False,
) -> jax.Array | tuple[jax.Array, Params]:
    """Translate each image in a larger canvas and add clutter cut from the other images.

    The ``TC`` variant of the STN paper: as ``random_translation``, then ``pieces`` patches of
    ``piece_size`` x ``piece_size`` pixels, each cut at a random place in the content box of
    another image of the batch (never the image itself), are put at random positions of the
    canvas (pixel-wise maximum with what is there).

    Args:
      key: PRNG key.
      x: square images (N, S, S, C), floating, N >= 2, S <= canvas.
      canvas: side of the output canvas in pixels.
      pieces: clutter patches per image.
      piece_size: side of a clutter patch, pixels (at most the content box's side).
      content: fraction of the input side the object occupies.
      return_params: also return ``{"shift": (N, 2), "clutter_source": (N, pieces),
        "clutter_crop": (N, pieces, 2), "clutter_position": (N, pieces, 2)}`` (int32): the
        digit's move as in ``random_translation``, which image of the batch each patch comes
        from, and the top-left corners (x, y) of the cut and of where it was put.

    Returns:
      Images (N, canvas, canvas, C), same dtype; with ``return_params`` a pair.
    """
    fn = "random_clutter"
    _check_canvas(fn, x, canvas)
    check_positive_int(fn, "pieces", pieces)
    check_positive_int(fn, "piece_size", piece_size)
    n, size = x.shape[:2]
    if n < 2:
        raise fail(fn, "x", "a batch of at least 2 images (clutter comes from the others)",
                   f"shape {x.shape}")
    lo = int(round((1.0 - content) * size / 2))
    hi = size - lo - piece_size
    if hi < lo or piece_size > canvas:
        raise fail(fn, "piece_size", f"at most the content box ({size - 2 * lo} px) and canvas",
                   piece_size)
    k_shift, k_src, k_crop, k_pos = jax.random.split(key, 4)
    shift = _integer_shift(k_shift, n, size, canvas, content)
    placed = _place(x, shift, canvas)
    source = (jnp.arange(n)[:, None] + jax.random.randint(k_src, (n, pieces), 1, n)) % n
    crop = jax.random.randint(k_crop, (n, pieces, 2), lo, hi + 1)
    position = jax.random.randint(k_pos, (n, pieces, 2), 0, canvas - piece_size + 1)
    r = jnp.arange(piece_size)
    # Pixel (i, j) of each patch: read at crop + (j, i) of its source, written at position +
    # (j, i) of its image; a scatter-max keeps overlapping ink.
    src_y = crop[..., 1, None, None] + r[:, None]
    src_x = crop[..., 0, None, None] + r[None, :]
    values = x[source[..., None, None], src_y, src_x]  # (N, pieces, p, p, C)
    dst_n = jnp.arange(n)[:, None, None, None]
    dst_y = position[..., 1, None, None] + r[:, None]
    dst_x = position[..., 0, None, None] + r[None, :]
    out = placed.at[dst_n, dst_y, dst_x].max(values)
    params = {"shift": shift, "clutter_source": source, "clutter_crop": crop,
              "clutter_position": position}
    return _result(out, params, return_params)


_DISTORTIONS: dict[str, Callable[..., Any]] = {
    "R": random_rotation,
    "RTS": random_rts,
    "P": random_projective,
    "E": random_elastic,
    "T": random_translation,
    "TC": random_clutter,
}


def get_distortion(variant: str, **options: Any) -> Callable[..., Any]:
    """The distortion function ``f(key, x)`` of a variant name.

    Args:
      variant: one of ``VARIANTS`` (``"R"``, ``"RTS"``, ``"P"``, ``"E"``, ``"T"``, ``"TC"``).
      **options: keyword options of the variant's function (e.g. ``return_params=True``).

    Returns:
      A callable ``f(key, x)`` mapping images (N, H, W, C) to distorted images (N, H', W', C)
      (and their parameters with ``return_params=True``).
    """
    check_choice("get_distortion", "variant", variant, VARIANTS)
    fn = _DISTORTIONS[variant]
    return partial(fn, **options) if options else fn


def distort(key: jax.Array, x: jax.Array, *, variant: str, **options: Any) -> Any:
    """Apply one of the STN paper's random distortions to a batch of images.

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating; square for ``"RTS"``, ``"T"``, ``"TC"``.
      variant: one of ``VARIANTS``.
      **options: keyword options of the variant's function (e.g. ``return_params=True``).

    Returns:
      Distorted images (N, S, S, C) with S = ``output_size(variant, size=H)``, same dtype (and the
      parameters with ``return_params=True``).
    """
    return get_distortion(variant, **options)(key, x)
