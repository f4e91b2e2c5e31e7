"""Small classifiers for the spatial-transformer experiment: a CNN and the ST-CNN.

The ST-CNN is a ``SpatialTransformer`` (Jaderberg et al., "Spatial Transformer Networks",
NeurIPS 2015) in front of the very same CNN: it predicts an affine transform of its input and
resamples it, so the classifier sees a rectified digit. Both are linen modules taking NHWC
images and returning logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Dtype
from attention_jax._validation import check_choice, check_nhwc, check_positive_int
from attention_jax.linen import SpatialTransformer

__all__ = ["CNN", "STCNN", "FlatLocalisation"]


class CNN(nn.Module):
    """A small convolutional classifier: (N, H, W, C) images -> (N, num_classes) logits.

    ``len(features)`` blocks of 3x3 conv + ReLU + 2x2 max-pool, then a hidden dense layer and
    the output layer (the STN paper's CNN baseline, sized for fast CPU training).
    """

    num_classes: int = 10
    features: Sequence[int] = (16, 32)
    hidden: int = 64
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        check_positive_int("CNN", "num_classes", self.num_classes)
        self.convs = [nn.Conv(f, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype)
                      for f in self.features]
        self.fc = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused (no dropout or batch statistics).

        Returns logits (N, num_classes).
        """
        check_nhwc("CNN", "x", x)
        for conv in self.convs:
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.head(nn.relu(self.fc(x)))


class FlatLocalisation(nn.Module):
    """The STN paper's CNN localisation net for digits: (N, H, W, C) -> (N, 6) affine params.

    2x2 max-pool, ``conv1`` (5x5) + ReLU + 2x2 max-pool, ``conv2`` (5x5) + ReLU, flatten,
    ``fc1`` + ReLU, ``fc2``. Flattening (not a global average) keeps *where* the digit is, which
    a translation (the ``T`` of ``RTS``) needs. Output: identity + ``scale`` * ``fc2(...)``, with
    ``fc2`` starting at zero: training starts at the identity, and ``scale`` < 1 slows the
    transform's updates (the usual lower learning rate of the localisation net; without it the
    transform collapses early at learning rates that suit the classifier).
    """

    features: tuple[int, int] = (16, 16)
    hidden: int = 32
    scale: float = 0.1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        conv = partial(nn.Conv, kernel_size=(5, 5), dtype=self.dtype,
                       param_dtype=self.param_dtype)
        self.conv1, self.conv2 = conv(self.features[0]), conv(self.features[1])
        self.fc1 = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)
        self.fc2 = nn.Dense(6, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=nn.initializers.zeros)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, 6) affine parameters (row-major theta)."""
        pool = partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
        h = nn.relu(self.conv1(pool(x)))
        h = nn.relu(self.conv2(pool(h)))
        delta = self.fc2(nn.relu(self.fc1(h.reshape(h.shape[0], -1))))
        identity = jnp.asarray(F.identity_transform_params("affine"), delta.dtype)
        return identity + self.scale * delta


class STCNN(nn.Module):
    """ST-CNN: a spatial transformer in front of ``CNN``; (N, H, W, C) -> (N, num_classes).

    The transformer regresses an affine ``theta`` (N, 2, 3), initialised to the identity, and
    resamples the input to ``out_size`` (default: the input size) with
    ``attention_jax.functional.spatial_transformer`` before the classifier ``cnn``.
    ``localisation="flat"`` (default) uses ``FlatLocalisation`` (the paper's, position-aware);
    ``"pooled"`` uses ``attention_jax.linen.SpatialTransformer`` as is (its localisation net
    averages globally). ``rectify`` returns the resampled images (N, Ho, Wo, C).
    """

    num_classes: int = 10
    channels: int = 1
    features: Sequence[int] = (16, 32)
    hidden: int = 64
    out_size: tuple[int, int] | None = None
    localisation: str = "flat"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        check_choice("STCNN", "localisation", self.localisation, ("flat", "pooled"))
        if self.localisation == "pooled":
            self.stn = SpatialTransformer(self.channels, out_size=self.out_size,
                                          dtype=self.dtype, param_dtype=self.param_dtype)
        else:
            self.loc = FlatLocalisation(dtype=self.dtype, param_dtype=self.param_dtype)
        self.cnn = CNN(self.num_classes, self.features, self.hidden, dtype=self.dtype,
                       param_dtype=self.param_dtype)

    def rectify(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns the transformer's output (N, Ho, Wo, C)."""
        check_nhwc("STCNN", "x", x, self.channels)
        if self.localisation == "pooled":
            return self.stn(x)
        return F.spatial_transformer(x, localisation=self.loc, transform="affine",
                                     out_size=self.out_size)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: passed to the classifier. Returns (N, num_classes)."""
        return self.cnn(self.rectify(x), train=train)
