"""The embedded 8x8 digits dataset: small, fast, for tests (the experiments use ``mnist``).

Built locally, with no download, from the UCI handwritten digits that ship inside scikit-learn
(``sklearn.datasets.load_digits``: 1,797 scans of 8x8 pixels, 0..16). Each scan is upsampled
(bicubic) to 20x20, clipped to [0, 1] and centred in a 28x28 frame, as MNIST centres its 20x20
digits; then each source image gives ``copies`` randomly distorted examples (variant ``R``,
``RTS``, ``P``, ``E`` of Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015, or
``plain`` for none). Train and test are split by source image (stratified by class, seeded),
so no scan is in both; every example records its ``source_id`` to prove it.

It is a tensorflow-datasets builder (``tfds.features.Tensor`` features, array_record files, no
TensorFlow needed), so it is cached and versioned like any tfds dataset::

    builder = Digits(config="RTS", data_dir=...)
    builder.download_and_prepare()          # generates locally; nothing is downloaded
    train = builder.as_data_source()["train"]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._extras import require
from attention_jax._validation import check_choice
from attention_jax.data.mnist import split_sources
from attention_jax.data.transforms import get_distortion

tfds = require("tensorflow_datasets", "train", "attention_jax.data")

__all__ = ["Digits", "DigitsConfig", "CONFIG_NAMES", "source_digits"]

CONFIG_NAMES: tuple[str, ...] = ("R", "RTS", "P", "E", "plain")
"""The builder configs: one per distortion variant of the paper's Table 1, and ``plain``
(undistorted 28x28)."""

TEST_FRACTION = 1.0 / 6.0
"""Share of each class's scans in the test split."""


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digit scans as MNIST-like 28x28 images.

    Returns:
      images (1797, 28, 28, 1) float32 in [0, 1] and labels (1797,) int64.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = digits.images.astype(np.float32)[..., None] / 16.0  # (N, 8, 8, 1) in [0, 1]
    resize = jax.jit(jax.image.resize, static_argnames=("shape", "method"))
    up = resize(jnp.asarray(scans), shape=(scans.shape[0], 20, 20, 1), method="bicubic")
    up = np.clip(np.asarray(up), 0.0, 1.0)
    images = np.pad(up, ((0, 0), (4, 4), (4, 4), (0, 0)))
    return images.astype(np.float32), digits.target.astype(np.int64)


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """A digits variant: which distortion, how many copies per source image, which seed."""

    variant: str | None = None
    copies: int = 4
    seed: int = 0

    @property
    def size(self) -> int:
        return 42 if self.variant == "RTS" else 28


_DESCRIPTIONS = {
    "R": "rotation, uniform in [-90, 90] degrees, 28x28",
    "RTS": "rotation [-45, 45] deg, scale [0.7, 1.2], random position in a 42x42 canvas",
    "P": "projective: scale [0.75, 1.0], corners moved by N(0, 5 px), 28x28",
    "E": "elastic: thin-plate spline, 4x4 control points moved by N(0, 1.5 px), 28x28",
    "plain": "no distortion, one copy per scan, 28x28",
}


class Digits(tfds.core.GeneratorBasedBuilder):
    """UCI handwritten digits (scikit-learn) upsampled to 28x28 and distorted; (N, H, W, 1) uint8.

    Features: ``image`` (H, W, 1) uint8 (H = W = 42 for ``RTS``, else 28), ``label`` in 0..9,
    ``source_id`` (index of the scan in ``load_digits()``).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        DigitsConfig(name=name, variant=None if name == "plain" else name,
                     copies=1 if name == "plain" else 4, description=_DESCRIPTIONS[name])
        for name in CONFIG_NAMES
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "UCI handwritten digits from scikit-learn, upsampled to 28x28 and distorted as "
                "the MNIST variants of 'Spatial Transformer Networks' (Jaderberg et al., 2015). "
                "Train/test split by source scan."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
                "source_id": tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=(
                "@misc{uci_digits, author={Alpaydin, E. and Kaynak, C.}, title={Optical "
                "Recognition of Handwritten Digits}, year={1998}, publisher={UCI Machine "
                "Learning Repository}}"
            ),
        )

    def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
        return {
            "train": self._generate_examples(split="train"),
            "test": self._generate_examples(split="test"),
        }

    def _generate_examples(self, split: str):
        check_choice("Digits", "split", split, ("train", "test"))
        config = self.builder_config
        images, labels = source_digits()
        train_idx, test_idx = split_sources(labels, test_fraction=TEST_FRACTION)
        ids = train_idx if split == "train" else test_idx
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0 if split == "train" else 1)
        for copy in range(config.copies):
            batch = images[ids]
            if config.variant is not None:
                fn = jax.jit(get_distortion(config.variant))
                batch = np.asarray(fn(jax.random.fold_in(key, copy), jnp.asarray(batch)))
            pixels = np.round(np.clip(batch, 0.0, 1.0) * 255.0).astype(np.uint8)
            for i, src in enumerate(ids):
                yield f"{int(src)}_{copy}", {
                    "image": pixels[i],
                    "label": int(labels[src]),
                    "source_id": np.int32(src),
                }
