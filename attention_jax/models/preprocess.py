"""timm's evaluation transform in JAX: resize by crop_pct, centre crop, normalise.

timm evaluates its ImageNet models with ``Resize(floor(size / crop_pct))`` (the short side, the
aspect ratio kept; torchvision's output-size rule), ``CenterCrop(size)`` (torchvision's
rounding of the offsets), ``ToTensor`` and ``Normalize(mean, std)``, on PIL images.
``preprocess`` does the same with ``jax.image.resize`` (antialiased when shrinking, as PIL is),
in PIL's two passes (width, then height), each rounded half up and clipped to integers in
[0, 255] as PIL's 8-bit resize does. The two then differ only where PIL's fixed-point filter
weights round the other way: on scikit-image's photos at most one unit of 255, in at most 0.3%
of the pixels (tests/models/test_preprocess.py compares against PIL's resize with
torchvision's size and crop rules; torchvision itself does not load here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._validation import fail
from attention_jax.models.zoo import PretrainedConfig, pretrained_config

__all__ = ["preprocess", "eval_sizes"]

_METHODS = {"bicubic": "cubic", "bilinear": "linear", "nearest": "nearest"}


def eval_sizes(height: int, width: int, config: PretrainedConfig) -> tuple[int, int, int, int]:
    """Sizes of timm's eval transform for one image: resized (h, w), then the crop's offsets.

    Args:
      height, width: the image's size.
      config: the model's ``PretrainedConfig`` (square ``input_size``).

    Returns:
      ``(resized_h, resized_w, top, left)``: torchvision's ``Resize(int)`` output size (short
      side ``floor(size / crop_pct)``, long side ``int(short * long / short_in)``) and
      ``CenterCrop``'s offsets (``int(round((resized - size) / 2))``).
    """
    size = config.input_size[-1]
    scale = math.floor(size / config.crop_pct)
    if width <= height:
        new_w, new_h = scale, int(scale * height / width)
    else:
        new_h, new_w = scale, int(scale * width / height)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def _check_config(fn: str, config: PretrainedConfig) -> None:
    c, h, w = config.input_size
    if c != 3 or h != w:
        raise fail(fn, "config.input_size", "(3, S, S) (a square RGB input)",
                   repr(config.input_size))
    if config.crop_mode != "center":
        raise fail(fn, "config.crop_mode", "'center'", repr(config.crop_mode))
    if config.interpolation not in _METHODS:
        raise fail(fn, "config.interpolation", f"one of {', '.join(map(repr, _METHODS))}",
                   repr(config.interpolation))
    if not 0 < config.crop_pct <= 1:
        raise fail(fn, "config.crop_pct", "in (0, 1]", repr(config.crop_pct))


def _one(image: jax.Array, config: PretrainedConfig) -> jax.Array:
    size = config.input_size[-1]
    new_h, new_w, top, left = eval_sizes(image.shape[0], image.shape[1], config)
    x = image.astype(jnp.float32)
    method = _METHODS[config.interpolation]
    # PIL resizes an 8-bit image in two passes, width then height, each rounded to 8 bits.
    for shape in ((x.shape[0], new_w, 3), (new_h, new_w, 3)):
        if shape != x.shape:
            x = jax.image.resize(x, shape, method=method, antialias=True)
            x = jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)  # round half up, as PIL
    x = x[top:top + size, left:left + size] / 255.0
    mean = jnp.asarray(config.mean, jnp.float32)
    std = jnp.asarray(config.std, jnp.float32)
    return (x - mean) / std


_one_jit = jax.jit(_one, static_argnums=1)


def preprocess(
    images: jax.Array | np.ndarray | Sequence[np.ndarray],
    name: str | PretrainedConfig,
) -> jax.Array:
    """Prepare uint8 RGB images for a zoo model as timm's evaluation transform does.

    Resize (short side to ``floor(size / crop_pct)``, aspect kept, with the configured
    interpolation, antialiased), centre crop to ``size x size``, scale to [0, 1] and normalise
    by the configured mean and std.

    Args:
      images: uint8 RGB, one image (H, W, 3), a batch (N, H, W, 3), or a sequence of
        (H_i, W_i, 3) images of different sizes.
      name: a timm zoo name (its ``pretrained_config``) or a ``PretrainedConfig``.

    Returns:
      (N, size, size, 3) float32 (N = 1 for one image), NHWC as the models take it.
    """
    fn = "preprocess"
    config = pretrained_config(name) if isinstance(name, str) else name
    if not isinstance(config, PretrainedConfig):
        raise fail(fn, "name", "a model name or a PretrainedConfig", type(name).__name__)
    _check_config(fn, config)
    if isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        arr = images
        if not hasattr(arr, "ndim") or arr.ndim not in (3, 4):
            raise fail(fn, "images", "an (H, W, 3) image, an (N, H, W, 3) batch or a sequence "
                       "of (H, W, 3) images", f"shape {tuple(np.shape(arr))}")
        batch = [arr] if arr.ndim == 3 else [arr[i] for i in range(arr.shape[0])]
    if not batch:
        raise fail(fn, "images", "at least one image", "none")
    out = []
    for i, img in enumerate(batch):
        if not hasattr(img, "dtype") or img.dtype != np.uint8:
            raise fail(fn, f"images[{i}]", "a uint8 array (pixel values 0..255)",
                       getattr(img, "dtype", type(img).__name__))
        if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < 1:
            raise fail(fn, f"images[{i}]", "an (H, W, 3) RGB image", f"shape {tuple(img.shape)}")
        out.append(_one_jit(jnp.asarray(img), config))
    return jnp.stack(out)
