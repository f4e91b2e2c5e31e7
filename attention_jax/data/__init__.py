"""Datasets and input pipelines: the distorted-MNIST and embedded 8x8 digits tfds builders, tfds
datasets by name, a seeded batching loader, and the STN paper's random distortions."""

from attention_jax.data.digits import *  # noqa: F403
from attention_jax.data.digits import __all__ as _digits_all
from attention_jax.data.loader import *  # noqa: F403
from attention_jax.data.loader import __all__ as _loader_all
from attention_jax.data.mnist import *  # noqa: F403
from attention_jax.data.mnist import __all__ as _mnist_all
from attention_jax.data.transforms import *  # noqa: F403
from attention_jax.data.transforms import __all__ as _transforms_all

__all__ = [*_transforms_all, *_mnist_all, *_digits_all, *_loader_all]
