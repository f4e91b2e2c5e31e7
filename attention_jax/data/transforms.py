"""Random geometric distortions of image batches: the STN paper's MNIST variants.

Jaderberg et al., "Spatial Transformer Networks" (NeurIPS 2015), Sec. 4.1 distort MNIST four
ways: ``R`` rotation, ``RTS`` rotation-translation-scale in a larger canvas, ``P`` projective and
``E`` elastic. Each function here draws one random transform per image from ``key`` and warps
the batch with the library's own sampler (``attention_jax.functional.sampling``), so the same
code builds the embedded digits dataset and distorts any image dataset on the fly.

All functions are pure (arrays in, arrays out), deterministic given ``key``, and jit-able;
images are NHWC floats; sampling grids stay float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from attention_jax._validation import check_choice, check_nhwc, check_positive_int, fail
from attention_jax.functional.sampling import affine_grid, grid_sample, perspective_grid

__all__ = [
    "VARIANTS",
    "random_rotation",
    "random_rts",
    "random_projective",
    "random_elastic",
    "distort",
    "get_distortion",
]

VARIANTS: tuple[str, ...] = ("R", "RTS", "P", "E")
"""The distortion variants of the STN paper's MNIST experiments."""


def _warp(x: jax.Array, grid: jax.Array) -> jax.Array:
    out = grid_sample(x.astype(jnp.float32), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    return out.astype(x.dtype)


def _check_range(fn: str, arg: str, lo_hi: tuple[float, float]) -> None:
    lo, hi = lo_hi
    if not (0 < lo <= hi):
        raise fail(fn, arg, "a pair (low, high) with 0 < low <= high", repr(lo_hi))


def random_rotation(key: jax.Array, x: jax.Array, *, max_degrees: float = 90.0) -> jax.Array:
    """Rotate each image about its centre by an angle drawn uniformly in [-max, max] degrees.

    The ``R`` variant of the STN paper (max 90 degrees).

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      max_degrees: largest absolute rotation angle.

    Returns:
      Rotated images (N, H, W, C), same dtype; pixels from outside the image are 0.
    """
    check_nhwc("random_rotation", "x", x)
    n = x.shape[0]
    angle = jnp.deg2rad(jax.random.uniform(key, (n,), minval=-max_degrees, maxval=max_degrees))
    c, s = jnp.cos(angle), jnp.sin(angle)
    z = jnp.zeros_like(c)
    # Normalised coordinates are isotropic only for square images: scale by the aspect ratio.
    h, w = x.shape[1:3]
    theta = jnp.stack([jnp.stack([c, -s * h / w, z], -1),
                       jnp.stack([s * w / h, c, z], -1)], 1)
    return _warp(x, affine_grid(theta, x.shape, align_corners=False))


def random_rts(
    key: jax.Array,
    x: jax.Array,
    *,
    max_degrees: float = 45.0,
    scale: tuple[float, float] = (0.7, 1.2),
    canvas: int = 42,
    content: float = 20.0 / 28.0,
) -> jax.Array:
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

    Returns:
      Distorted images (N, canvas, canvas, C), same dtype.
    """
    fn = "random_rts"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "canvas", canvas)
    _check_range(fn, "scale", scale)
    n, h, w, c = x.shape
    if h != w or h > canvas:
        raise fail(fn, "x", f"square images no larger than canvas={canvas}", f"shape {x.shape}")
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-max_degrees, maxval=max_degrees))
    s = jax.random.uniform(k_scale, (n,), minval=scale[0], maxval=scale[1])
    # Maximal shift (in canvas pixels) that keeps the scaled content box inside the canvas.
    max_shift = jnp.maximum(canvas - content * h * s, 0.0) / 2.0
    shift = jax.random.uniform(k_shift, (n, 2), minval=-1.0, maxval=1.0) * max_shift[:, None]
    t = 2.0 * shift / canvas  # pixels -> normalised canvas coordinates
    # The image first sits at the canvas centre at its own size; then output p = A q + t, with
    # A = s R, so the sampler (output -> input) uses q = A^-1 (p - t).
    pad = (canvas - h) // 2
    placed = jnp.pad(x, ((0, 0), (pad, canvas - h - pad), (pad, canvas - w - pad), (0, 0)))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    inv = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], 1) / s[:, None, None]
    offset = -jnp.einsum("nij,nj->ni", inv, t)
    theta = jnp.concatenate([inv, offset[:, :, None]], axis=2)
    return _warp(placed, affine_grid(theta, placed.shape, align_corners=False))


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
    corner_std: float = 0.1,
    scale: tuple[float, float] = (0.75, 1.0),
) -> jax.Array:
    """Warp each image by a random perspective transform.

    The ``P`` variant of the STN paper: the image is scaled by a factor drawn uniformly in
    ``scale`` and its four corners are moved independently by Gaussian noise of standard
    deviation ``corner_std`` (normalised coordinates, image side = 2); the image is warped by
    the homography that maps its corners to the moved ones.

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      corner_std: standard deviation of each corner's displacement (normalised units).
      scale: (low, high) range of the uniform scale factor.

    Returns:
      Distorted images (N, H, W, C), same dtype.
    """
    fn = "random_projective"
    check_nhwc(fn, "x", x)
    _check_range(fn, "scale", scale)
    if corner_std < 0:
        raise fail(fn, "corner_std", "non-negative", repr(corner_std))
    n = x.shape[0]
    k_scale, k_noise = jax.random.split(key)
    corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], jnp.float32)
    s = jax.random.uniform(k_scale, (n, 1, 1), minval=scale[0], maxval=scale[1])
    moved = corners * s + corner_std * jax.random.normal(k_noise, (n, 4, 2))
    # The sampler maps output -> input: output corners `moved` come from input `corners`.
    mats = jax.vmap(_homography, in_axes=(None, 0))(corners, moved)
    return _warp(x, perspective_grid(mats, x.shape, align_corners=False))


def random_elastic(
    key: jax.Array,
    x: jax.Array,
    *,
    control: int = 4,
    max_displacement: float = 2.0,
) -> jax.Array:
    """Warp each image by a random smooth displacement field (elastic distortion).

    The ``E`` variant of the STN paper: a regular ``control`` x ``control`` grid of control
    points, each displaced uniformly by up to ``max_displacement`` pixels in x and y, the
    displacement interpolated smoothly (bicubic) to every pixel. (The paper interpolates with
    a thin-plate spline; bicubic interpolation of the control displacements is a smooth field of
    the same kind.)

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating.
      control: control points per side (>= 2).
      max_displacement: largest displacement of a control point, in pixels.

    Returns:
      Distorted images (N, H, W, C), same dtype.
    """
    fn = "random_elastic"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "control", control, minimum=2)
    n, h, w, _ = x.shape
    disp = jax.random.uniform(key, (n, control, control, 2), minval=-max_displacement,
                              maxval=max_displacement)
    disp = jax.image.resize(disp, (n, h, w, 2), method="bicubic")
    disp = disp * (2.0 / jnp.array([w, h], jnp.float32))  # pixels -> normalised (x, y)
    identity = jnp.broadcast_to(jnp.eye(2, 3, dtype=jnp.float32), (n, 2, 3))
    grid = affine_grid(identity, x.shape, align_corners=False) + disp
    return _warp(x, grid)


_DISTORTIONS: dict[str, Callable[..., jax.Array]] = {
    "R": random_rotation,
    "RTS": random_rts,
    "P": random_projective,
    "E": random_elastic,
}


def get_distortion(variant: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The distortion function ``f(key, x)`` of a variant name.

    Args:
      variant: one of ``VARIANTS`` (``"R"``, ``"RTS"``, ``"P"``, ``"E"``).

    Returns:
      A callable ``f(key, x)`` mapping images (N, H, W, C) to distorted images (N, H', W', C).
    """
    check_choice("get_distortion", "variant", variant, VARIANTS)
    return _DISTORTIONS[variant]


def distort(key: jax.Array, x: jax.Array, *, variant: str) -> jax.Array:
    """Apply one of the STN paper's random distortions to a batch of images.

    Args:
      key: PRNG key.
      x: images (N, H, W, C), floating; square for ``"RTS"``.
      variant: ``"R"``, ``"RTS"``, ``"P"`` or ``"E"``.

    Returns:
      Distorted images (N, H, W, C), or (N, 42, 42, C) for ``"RTS"``; same dtype.
    """
    return get_distortion(variant)(key, x)
