"""The spatial-transformer experiment's classifiers (linen): FCN, CNN, ST-FCN and ST-CNN.

Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015, Sec. 4.1 (distorted MNIST). An
ST classifier is a spatial transformer (a localisation net ``loc`` that regresses an affine,
projective or thin-plate-spline transform, initialised to the identity, and a sampler) in front
of a classifier that then sees a rectified digit. These modules only declare layers; the
forwards are in ``attention_jax.models.classifier_core`` and shared with the nnx twins in
``attention_jax.models.cnn_nnx`` (same parameter trees). NHWC images in, logits out.

Parameters with the default fields, 28x28 inputs and 10 classes: ``FCN`` 109,386, ``CNN``
105,866, ``STCNN`` 147,996 (affine), 148,062 (perspective), 148,854 (tps), ``STFCN`` 134,704
(affine). The dense layers after a flatten grow with the input size. ``examples/stn_mnist.py``
sets the widths of its experiment (about 220k parameters per model) and prints the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_positive_int
from attention_jax.linen import LocalisationNet
from attention_jax.linen._maps import call_and_sow
from attention_jax.models import classifier_core as C

__all__ = ["FCN", "CNN", "ConvLocalisation", "FCLocalisation", "STCNN", "STFCN",
           "localisation_labels"]

localisation_labels = C.localisation_labels

_LOCALISATIONS = ("flat", "pooled")


def _constant(values: Sequence[float]):
    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(values, dtype).reshape(shape)

    return init


def _conv(m: nn.Module, features: int, kernel_size: int) -> nn.Conv:
    return nn.Conv(features, (kernel_size, kernel_size), padding="SAME", dtype=m.dtype,
                   param_dtype=m.param_dtype, precision=m.precision)


def _dense(m: nn.Module, features: int, **kw: Any) -> nn.Dense:
    return nn.Dense(features, dtype=m.dtype, param_dtype=m.param_dtype, precision=m.precision,
                    **kw)


def _last(m: nn.Module, bias: Sequence[float]) -> nn.Dense:
    """A localisation net's output layer: zero kernel, the identity transform as bias."""
    return _dense(m, len(bias), kernel_init=nn.initializers.zeros, bias_init=_constant(bias))


def _common(m: nn.Module) -> dict[str, Any]:
    return {"dtype": m.dtype, "param_dtype": m.param_dtype, "precision": m.precision}


class FCN(nn.Module):
    """Fully connected classifier (the paper's FCN baseline): (N, H, W, C) -> (N, num_classes).

    ``fc1`` (-> hidden[0], ReLU), ``fc2`` (-> hidden[1], ReLU), ``head``.

    Attributes:
      num_classes: outputs (default 10).
      hidden: widths of the two hidden layers (default (128, 64)).
      dtype, param_dtype, precision: as in ``flax.linen.Dense``.
    """

    num_classes: int = 10
    hidden: tuple[int, int] = (128, 64)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_positive_int("FCN", "num_classes", self.num_classes)
        self.fc1, self.fc2 = _dense(self, self.hidden[0]), _dense(self, self.hidden[1])
        self.head = _dense(self, self.num_classes)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns logits (N, num_classes)."""
        check_nhwc("FCN", "x", x)
        return C.fcn_forward(x, fc1=self.fc1, fc2=self.fc2, head=self.head)


class CNN(nn.Module):
    """Convolutional classifier (the paper's CNN baseline): (N, H, W, C) -> (N, num_classes).

    ``conv1`` (kernel_size, -> features[0]) and ``conv2`` (-> features[1]), each with ReLU and a
    2x2 max pool, flattened, ``fc`` (-> hidden, ReLU), ``head``.

    Attributes:
      num_classes: outputs (default 10).
      features: the two convolutions' widths (default (16, 32)).
      kernel_size: their square kernel (default 3).
      hidden: width of ``fc`` (default 64).
      dtype, param_dtype, precision: as in ``flax.linen.Conv``.
    """

    num_classes: int = 10
    features: tuple[int, int] = (16, 32)
    kernel_size: int = 3
    hidden: int = 64
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_positive_int("CNN", "num_classes", self.num_classes)
        self.conv1 = _conv(self, self.features[0], self.kernel_size)
        self.conv2 = _conv(self, self.features[1], self.kernel_size)
        self.fc, self.head = _dense(self, self.hidden), _dense(self, self.num_classes)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns logits (N, num_classes)."""
        check_nhwc("CNN", "x", x)
        return C.cnn_forward(x, conv1=self.conv1, conv2=self.conv2, fc=self.fc, head=self.head)


class ConvLocalisation(nn.Module):
    """The ST-CNN's localisation net (``classifier_core.conv_localisation``).

    (N, H, W, C) -> (N, P).

    Attributes:
      final_bias: the identity transform's P parameters (``fc2``'s initial bias; its kernel
        starts at zero, so the net starts at the identity). Default: affine.
      features: widths of ``conv1`` and ``conv2`` (default (20, 20)).
      kernel_size: their square kernel (default 5).
      hidden: width of ``fc1`` (default 32).
      dtype, param_dtype, precision: as in ``flax.linen.Conv``.
    """

    final_bias: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    features: tuple[int, int] = (20, 20)
    kernel_size: int = 5
    hidden: int = 32
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.conv1 = _conv(self, self.features[0], self.kernel_size)
        self.conv2 = _conv(self, self.features[1], self.kernel_size)
        self.fc1, self.fc2 = _dense(self, self.hidden), _last(self, self.final_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, P) transform parameters."""
        return C.conv_localisation(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                   fc2=self.fc2)


class FCLocalisation(nn.Module):
    """The ST-FCN's localisation net (``classifier_core.fc_localisation``): (N, H, W, C) -> (N, P).

    Attributes:
      final_bias: the identity transform's P parameters (``fc2`` starts at zero kernel).
      hidden: width of ``fc1`` (default 32).
      dtype, param_dtype, precision: as in ``flax.linen.Dense``.
    """

    final_bias: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    hidden: int = 32
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.fc1, self.fc2 = _dense(self, self.hidden), _last(self, self.final_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, P) transform parameters."""
        return C.fc_localisation(x, fc1=self.fc1, fc2=self.fc2)


def _st_options(m: nn.Module) -> dict[str, Any]:
    return {"localisation": m.loc, "transform": m.transform, "out_size": m.out_size,
            "tps_grid_size": m.tps_grid_size}


def _rectify(m: nn.Module, x: jax.Array, return_transform: bool) -> Any:
    check_nhwc(type(m).__name__, "x", x, m.channels)
    return C.rectify(x, return_transform=return_transform, **_st_options(m))


class STCNN(nn.Module):
    """ST-CNN: a spatial transformer in front of ``CNN``; (N, H, W, C) -> (N, num_classes).

    Submodules ``loc`` (the localisation net) and ``cnn`` (the classifier, on the transformer's
    ``out_size`` output). ``rectify`` gives what the classifier sees.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(model, x, variables=v)``; the output is the same): the
    spatial transformer's, as ``SpatialTransformer``'s: ``params`` (N, P), ``grid``
    (N, Ho, Wo, 2), ``matrix`` (or ``control_points`` for tps) and ``sampled`` (N, Ho, Wo, C),
    what the classifier sees.

    Attributes:
      num_classes: outputs (default 10).
      channels: input channels C (default 1).
      transform: ``"affine"`` (default), ``"perspective"``, ``"tps"`` (or any of
        ``F.TRANSFORMS``); the identity at initialisation.
      out_size: (Ho, Wo) of the transformer's output (default: the input's).
      tps_grid_size: the thin-plate spline's control lattice (default (4, 4): 16 points).
      localisation: ``"flat"`` (default): ``ConvLocalisation`` (pool first, 5x5 convs,
        flattened); ``"pooled"``: ``attention_jax.linen.LocalisationNet`` (3x3 convs, averaged
        to a 4x4 grid, any input size).
      features, kernel_size, hidden: the ``CNN``'s (defaults (16, 32), 3, 64).
      loc_features, loc_kernel_size, loc_hidden: the localisation net's (defaults (20, 20), 5,
        32; ``"pooled"`` has fixed 3x3 kernels).
      dtype, param_dtype, precision: as in ``flax.linen.Conv``.
    """

    num_classes: int = 10
    channels: int = 1
    transform: str = "affine"
    out_size: tuple[int, int] | None = None
    tps_grid_size: tuple[int, int] = (4, 4)
    localisation: str = "flat"
    features: tuple[int, int] = (16, 32)
    kernel_size: int = 3
    hidden: int = 64
    loc_features: tuple[int, int] = (20, 20)
    loc_kernel_size: int = 5
    loc_hidden: int = 32
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_choice("STCNN", "localisation", self.localisation, _LOCALISATIONS)
        check_choice("STCNN", "transform", self.transform, F.TRANSFORMS)
        bias = C.identity_bias(self.transform, self.tps_grid_size)
        if self.localisation == "pooled":
            self.loc = LocalisationNet(self.channels, out_features=len(bias),
                                       features=self.loc_features, hidden=self.loc_hidden,
                                       final_bias=bias, **_common(self))
        else:
            self.loc = ConvLocalisation(final_bias=bias, features=self.loc_features,
                                        kernel_size=self.loc_kernel_size,
                                        hidden=self.loc_hidden, **_common(self))
        self.cnn = CNN(num_classes=self.num_classes, features=self.features,
                       kernel_size=self.kernel_size, hidden=self.hidden, **_common(self))

    def rectify(self, x: jax.Array, *, return_transform: bool = False) -> Any:
        """The spatial transformer's output (N, Ho, Wo, C), what the classifier sees.

        Args:
          x: images (N, H, W, C).
          return_transform: also return the transform dict (``"params"`` (N, P), ``"grid"``,
            ``"matrix"`` or ``"control_points"``; see ``F.spatial_transformer``).

        Returns:
          (N, Ho, Wo, C) (and the transform dict).
        """
        return _rectify(self, x, return_transform)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns logits (N, num_classes)."""
        check_nhwc("STCNN", "x", x, self.channels)
        return call_and_sow(self, C.st_forward, x, classifier=self.cnn, **_st_options(self))


class STFCN(nn.Module):
    """ST-FCN: a spatial transformer (``FCLocalisation``) in front of ``FCN``.

    (N, H, W, C) -> (N, num_classes). Submodules ``loc`` and ``fcn``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(model, x, variables=v)``; the output is the same): the
    spatial transformer's, as ``SpatialTransformer``'s: ``params`` (N, P), ``grid``
    (N, Ho, Wo, 2), ``matrix`` (or ``control_points`` for tps) and ``sampled`` (N, Ho, Wo, C),
    what the classifier sees.

    Attributes:
      num_classes, channels, transform, out_size, tps_grid_size: as ``STCNN``.
      hidden: the ``FCN``'s hidden widths (default (128, 64)).
      loc_hidden: the localisation net's hidden width (default 32).
      dtype, param_dtype, precision: as in ``flax.linen.Dense``.
    """

    num_classes: int = 10
    channels: int = 1
    transform: str = "affine"
    out_size: tuple[int, int] | None = None
    tps_grid_size: tuple[int, int] = (4, 4)
    hidden: tuple[int, int] = (128, 64)
    loc_hidden: int = 32
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_choice("STFCN", "transform", self.transform, F.TRANSFORMS)
        bias = C.identity_bias(self.transform, self.tps_grid_size)
        self.loc = FCLocalisation(final_bias=bias, hidden=self.loc_hidden, **_common(self))
        self.fcn = FCN(num_classes=self.num_classes, hidden=self.hidden, **_common(self))

    def rectify(self, x: jax.Array, *, return_transform: bool = False) -> Any:
        """The spatial transformer's output (N, Ho, Wo, C); see ``STCNN.rectify``.

        Args:
          x: images (N, H, W, C).
          return_transform: also return the transform dict.

        Returns:
          (N, Ho, Wo, C) (and the transform dict).
        """
        return _rectify(self, x, return_transform)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns logits (N, num_classes)."""
        check_nhwc("STFCN", "x", x, self.channels)
        return call_and_sow(self, C.st_forward, x, classifier=self.fcn, **_st_options(self))
