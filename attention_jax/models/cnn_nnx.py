"""The spatial-transformer experiment's classifiers as Flax nnx modules; same parameter trees as
``attention_jax.models.cnn`` (linen), same forwards (``attention_jax.models.classifier_core``).

nnx builds every layer eagerly, so a dense layer after a flatten needs the input size: the
modules take ``in_size`` (H, W) (default (28, 28)) where linen infers it at ``init``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_positive_int, fail
from attention_jax.models import classifier_core as C
from attention_jax.nnx import LocalisationNet
from attention_jax.nnx._maps import call_and_sow

__all__ = ["FCN", "CNN", "ConvLocalisation", "FCLocalisation", "STCNN", "STFCN"]

_LOCALISATIONS = ("flat", "pooled")


def _constant(values: Sequence[float]):
    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(values, dtype).reshape(shape)

    return init


class _Factory:
    """Layer constructors with a model's dtype, param_dtype, precision and rngs."""

    def __init__(self, dtype: Dtype | None, param_dtype: Dtype, precision: PrecisionLike,
                 rngs: nnx.Rngs) -> None:
        self.kw = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision,
                   "rngs": rngs}

    def conv(self, cin: int, cout: int, k: int) -> nnx.Conv:
        return nnx.Conv(cin, cout, (k, k), padding="SAME", **self.kw)

    def dense(self, cin: int, cout: int, **kw: Any) -> nnx.Linear:
        return nnx.Linear(cin, cout, **self.kw, **kw)

    def last(self, cin: int, bias: Sequence[float]) -> nnx.Linear:
        """A localisation net's output layer: zero kernel, the identity transform as bias."""
        return self.dense(cin, len(bias), kernel_init=nnx.initializers.zeros,
                          bias_init=_constant(bias))


def _check_size(fn: str, in_size: Sequence[int]) -> tuple[int, int]:
    if not isinstance(in_size, (tuple, list)) or len(in_size) != 2:
        raise fail(fn, "in_size", "a pair (H, W)", repr(in_size))
    for v in in_size:
        check_positive_int(fn, "in_size", v, minimum=4)
    return int(in_size[0]), int(in_size[1])


class FCN(nnx.Module):
    """Fully connected classifier, nnx; see the linen ``FCN``. (N, H, W, C) -> (N, classes).

    Args:
      num_classes: outputs (default 10).
      hidden: widths of the two hidden layers (default (128, 64)).
      in_size: (H, W) of the input (default (28, 28)).
      channels: C of the input (default 1).
      dtype, param_dtype, precision: as in ``flax.nnx.Linear``.
      rngs: initialisation keys.
    """

    def __init__(self, *, num_classes: int = 10, hidden: tuple[int, int] = (128, 64),
                 in_size: tuple[int, int] = (28, 28), channels: int = 1,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 precision: PrecisionLike = None, rngs: nnx.Rngs) -> None:
        check_positive_int("FCN", "num_classes", num_classes)
        h, w = _check_size("FCN", in_size)
        make = _Factory(dtype, param_dtype, precision, rngs)
        self.fc1 = make.dense(h * w * channels, hidden[0])
        self.fc2 = make.dense(hidden[0], hidden[1])
        self.head = make.dense(hidden[1], num_classes)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns logits (N, num_classes)."""
        check_nhwc("FCN", "x", x)
        return C.fcn_forward(x, fc1=self.fc1, fc2=self.fc2, head=self.head)


class CNN(nnx.Module):
    """Convolutional classifier, nnx; see the linen ``CNN``. (N, H, W, C) -> (N, classes).

    Args:
      num_classes: outputs (default 10).
      features: the two convolutions' widths (default (16, 32)).
      kernel_size: their square kernel (default 3).
      hidden: width of ``fc`` (default 64).
      in_size: (H, W) of the input (default (28, 28)).
      channels: C of the input (default 1).
      dtype, param_dtype, precision: as in ``flax.nnx.Conv``.
      rngs: initialisation keys.
    """

    def __init__(self, *, num_classes: int = 10, features: tuple[int, int] = (16, 32),
                 kernel_size: int = 3, hidden: int = 64, in_size: tuple[int, int] = (28, 28),
                 channels: int = 1, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, precision: PrecisionLike = None,
                 rngs: nnx.Rngs) -> None:
        check_positive_int("CNN", "num_classes", num_classes)
        h, w = _check_size("CNN", in_size)
        make = _Factory(dtype, param_dtype, precision, rngs)
        self.conv1 = make.conv(channels, features[0], kernel_size)
        self.conv2 = make.conv(features[0], features[1], kernel_size)
        self.fc = make.dense((h // 4) * (w // 4) * features[1], hidden)
        self.head = make.dense(hidden, num_classes)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns logits (N, num_classes)."""
        check_nhwc("CNN", "x", x)
        return C.cnn_forward(x, conv1=self.conv1, conv2=self.conv2, fc=self.fc, head=self.head)


class ConvLocalisation(nnx.Module):
    """The ST-CNN's localisation net, nnx; see the linen ``ConvLocalisation``.

    Args:
      final_bias: the identity transform's P parameters (default: affine).
      features: widths of ``conv1`` and ``conv2`` (default (20, 20)).
      kernel_size: their square kernel (default 5).
      hidden: width of ``fc1`` (default 32).
      in_size: (H, W) of the input (default (28, 28)).
      channels: C of the input (default 1).
      dtype, param_dtype, precision: as in ``flax.nnx.Conv``.
      rngs: initialisation keys.
    """

    def __init__(self, *, final_bias: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                 features: tuple[int, int] = (20, 20), kernel_size: int = 5, hidden: int = 32,
                 in_size: tuple[int, int] = (28, 28), channels: int = 1,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 precision: PrecisionLike = None, rngs: nnx.Rngs) -> None:
        h, w = _check_size("ConvLocalisation", in_size)
        make = _Factory(dtype, param_dtype, precision, rngs)
        self.conv1 = make.conv(channels, features[0], kernel_size)
        self.conv2 = make.conv(features[0], features[1], kernel_size)
        self.fc1 = make.dense((h // 4) * (w // 4) * features[1], hidden)
        self.fc2 = make.last(hidden, final_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, P) transform parameters."""
        return C.conv_localisation(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                   fc2=self.fc2)


class FCLocalisation(nnx.Module):
    """The ST-FCN's localisation net, nnx; see the linen ``FCLocalisation``.

    Args:
      final_bias: the identity transform's P parameters (default: affine).
      hidden: width of ``fc1`` (default 32).
      in_size: (H, W) of the input (default (28, 28)).
      channels: C of the input (default 1).
      dtype, param_dtype, precision: as in ``flax.nnx.Linear``.
      rngs: initialisation keys.
    """

    def __init__(self, *, final_bias: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                 hidden: int = 32, in_size: tuple[int, int] = (28, 28), channels: int = 1,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 precision: PrecisionLike = None, rngs: nnx.Rngs) -> None:
        h, w = _check_size("FCLocalisation", in_size)
        make = _Factory(dtype, param_dtype, precision, rngs)
        self.fc1 = make.dense(h * w * channels, hidden)
        self.fc2 = make.last(hidden, final_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, P) transform parameters."""
        return C.fc_localisation(x, fc1=self.fc1, fc2=self.fc2)


class _ST(nnx.Module):
    """What ST-CNN and ST-FCN share: the transform's options and ``rectify``."""

    def _setup(self, name: str, channels: int, transform: str, out_size: Any,
               tps_grid_size: tuple[int, int], in_size: tuple[int, int]) -> tuple[int, int]:
        check_choice(name, "transform", transform, F.TRANSFORMS)
        self.channels, self.transform = channels, transform
        self.out_size, self.tps_grid_size = out_size, tuple(tps_grid_size)
        in_size = _check_size(name, in_size)
        return in_size if out_size is None else _check_size(name, out_size)

    def _options(self) -> dict[str, Any]:
        return {"localisation": self.loc, "transform": self.transform,
                "out_size": self.out_size, "tps_grid_size": self.tps_grid_size}

    def rectify(self, x: jax.Array, *, return_transform: bool = False) -> Any:
        """The spatial transformer's output (N, Ho, Wo, C), what the classifier sees.

        Args:
          x: images (N, H, W, C).
          return_transform: also return the transform dict (see ``F.spatial_transformer``).

        Returns:
          (N, Ho, Wo, C) (and the transform dict).
        """
        check_nhwc(type(self).__name__, "x", x, self.channels)
        return C.rectify(x, return_transform=return_transform, **self._options())


class STCNN(_ST):
    """ST-CNN, nnx; see the linen ``STCNN`` (same arguments, plus ``in_size``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(model, x)``; the output is the same): the spatial
    transformer's, as ``SpatialTransformer``'s: ``params`` (N, P), ``grid`` (N, Ho, Wo, 2),
    ``matrix`` (or ``control_points`` for tps) and ``sampled`` (N, Ho, Wo, C).

    Args:
      num_classes: outputs (default 10).
      channels: input channels C (default 1).
      transform: ``"affine"`` (default), ``"perspective"``, ``"tps"``, ...
      out_size: (Ho, Wo) of the transformer's output (default: ``in_size``).
      tps_grid_size: the thin-plate spline's control lattice (default (4, 4)).
      localisation: ``"flat"`` (default, ``ConvLocalisation``) or ``"pooled"``
        (``attention_jax.nnx.LocalisationNet``).
      features, kernel_size, hidden: the ``CNN``'s (defaults (16, 32), 3, 64).
      loc_features, loc_kernel_size, loc_hidden: the localisation net's ((20, 20), 5, 32).
      in_size: (H, W) of the input (default (28, 28)).
      dtype, param_dtype, precision: as in ``flax.nnx.Conv``.
      rngs: initialisation keys.
    """

    def __init__(self, *, num_classes: int = 10, channels: int = 1, transform: str = "affine",
                 out_size: tuple[int, int] | None = None,
                 tps_grid_size: tuple[int, int] = (4, 4), localisation: str = "flat",
                 features: tuple[int, int] = (16, 32), kernel_size: int = 3, hidden: int = 64,
                 loc_features: tuple[int, int] = (20, 20), loc_kernel_size: int = 5,
                 loc_hidden: int = 32, in_size: tuple[int, int] = (28, 28),
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 precision: PrecisionLike = None, rngs: nnx.Rngs) -> None:
        check_choice("STCNN", "localisation", localisation, _LOCALISATIONS)
        out = self._setup("STCNN", channels, transform, out_size, tps_grid_size, in_size)
        bias = C.identity_bias(transform, tps_grid_size)
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision,
                  "rngs": rngs}
        if localisation == "pooled":
            self.loc = LocalisationNet(channels, out_features=len(bias), features=loc_features,
                                       hidden=loc_hidden, final_bias=bias, **common)
        else:
            self.loc = ConvLocalisation(final_bias=bias, features=loc_features,
                                        kernel_size=loc_kernel_size, hidden=loc_hidden,
                                        in_size=in_size, channels=channels, **common)
        self.cnn = CNN(num_classes=num_classes, features=features, kernel_size=kernel_size,
                       hidden=hidden, in_size=out, channels=channels, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns logits (N, num_classes)."""
        check_nhwc("STCNN", "x", x, self.channels)
        return call_and_sow(self, C.st_forward, x, classifier=self.cnn, **self._options())


class STFCN(_ST):
    """ST-FCN, nnx; see the linen ``STFCN`` (same arguments, plus ``in_size``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(model, x)``; the output is the same): the spatial
    transformer's, as ``SpatialTransformer``'s: ``params`` (N, P), ``grid`` (N, Ho, Wo, 2),
    ``matrix`` (or ``control_points`` for tps) and ``sampled`` (N, Ho, Wo, C).

    Args:
      num_classes, channels, transform, out_size, tps_grid_size: as ``STCNN``.
      hidden: the ``FCN``'s hidden widths (default (128, 64)).
      loc_hidden: the localisation net's hidden width (default 32).
      in_size: (H, W) of the input (default (28, 28)).
      dtype, param_dtype, precision: as in ``flax.nnx.Linear``.
      rngs: initialisation keys.
    """

    def __init__(self, *, num_classes: int = 10, channels: int = 1, transform: str = "affine",
                 out_size: tuple[int, int] | None = None,
                 tps_grid_size: tuple[int, int] = (4, 4), hidden: tuple[int, int] = (128, 64),
                 loc_hidden: int = 32, in_size: tuple[int, int] = (28, 28),
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 precision: PrecisionLike = None, rngs: nnx.Rngs) -> None:
        out = self._setup("STFCN", channels, transform, out_size, tps_grid_size, in_size)
        bias = C.identity_bias(transform, tps_grid_size)
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision,
                  "rngs": rngs}
        self.loc = FCLocalisation(final_bias=bias, hidden=loc_hidden, in_size=in_size,
                                  channels=channels, **common)
        self.fcn = FCN(num_classes=num_classes, hidden=hidden, in_size=out, channels=channels,
                       **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns logits (N, num_classes)."""
        check_nhwc("STFCN", "x", x, self.channels)
        return call_and_sow(self, C.st_forward, x, classifier=self.fcn, **self._options())
