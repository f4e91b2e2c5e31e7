"""The batching loader: shuffling by seed, order from the step, remainder, distortion."""

import numpy as np
import pytest

from attention_jax.data import ArraySource, Loader, load


def _source(n=50, size=8):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 1),
                                                                         np.uint8)
    return ArraySource(images, np.arange(n) % 10)


def _ids(batch):
    return batch["image"][:, 0, 0, 0] * 255  # each image's pixel value is its index


def test_batches_are_float_images_and_int_labels():
    b = Loader(_source(), batch_size=8, seed=0).batch(0)
    assert b["image"].shape == (8, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert b["image"].max() <= 49 / 255 + 1e-6
    np.testing.assert_array_equal(np.round(_ids(b)).astype(int) % 10, b["label"])


def test_shuffling_by_seed():
    order = lambda seed: np.concatenate(  # noqa: E731
        [_ids(b) for b in Loader(_source(), batch_size=10, seed=seed)])
    np.testing.assert_array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    np.testing.assert_allclose(np.sort(order(0)), np.arange(50), atol=1e-4)  # a permutation
    unshuffled = Loader(_source(), batch_size=10, shuffle=False)
    np.testing.assert_allclose(np.concatenate([_ids(b) for b in unshuffled]), np.arange(50),
                               atol=1e-4)


def test_order_is_a_function_of_the_step():
    a = Loader(_source(), batch_size=8, seed=3)
    b = Loader(_source(), batch_size=8, seed=3)
    seq = [_ids(a.batch(s)) for s in range(15)]  # crosses epochs (6 batches per epoch)
    for s in (13, 2, 7, 0):  # random access, any order, a fresh loader
        np.testing.assert_array_equal(b.batch(s)["image"], a.batch(s)["image"])
        np.testing.assert_array_equal(_ids(b.batch(s)), seq[s])
    # A new epoch is a new permutation.
    assert not np.array_equal(np.concatenate(seq[:6]), np.concatenate(seq[6:12]))
    resumed = [_ids(x) for x in b.iterate(start=9, stop=12)]
    for got, want in zip(resumed, seq[9:12], strict=True):
        np.testing.assert_array_equal(got, want)


def test_drop_remainder():
    keep = Loader(_source(), batch_size=16, seed=0, drop_remainder=False)
    drop = Loader(_source(), batch_size=16, seed=0, drop_remainder=True)
    assert (len(keep), len(drop)) == (4, 3)
    assert [len(b["label"]) for b in keep] == [16, 16, 16, 2]
    assert [len(b["label"]) for b in drop] == [16, 16, 16]
    assert sorted(np.round(np.concatenate([_ids(b) for b in keep])).astype(int)) == list(
        range(50))


def test_on_the_fly_distortion_is_seeded_per_step(digits_dir):
    src = load("digits/plain", split="test", data_dir=digits_dir)
    loader = Loader(src, batch_size=8, seed=0, distortion="RTS")
    b0, b0_again, b1 = loader.batch(0), loader.batch(0), loader.batch(1)
    assert b0["image"].shape == (8, 42, 42, 1) and b0["image"].dtype == np.float32
    np.testing.assert_array_equal(b0["image"], b0_again["image"])
    plain = Loader(src, batch_size=8, seed=0).batch(0)
    np.testing.assert_array_equal(plain["label"], b0["label"])  # same examples, distorted
    np.testing.assert_allclose(b0["image"].sum((1, 2, 3)), plain["image"].sum((1, 2, 3)),
                               rtol=0.5)
    other = Loader(src, batch_size=8, seed=1, distortion="RTS").batch(0)
    assert not np.array_equal(other["image"], b0["image"])
    assert not np.allclose(b1["image"][:1], b0["image"][:1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "Loader: batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 64}, "Loader: batch_size must be at most the dataset size 50"),
        ({"batch_size": 8, "distortion": "Q"}, "get_distortion: variant must be one of"),
    ],
    ids=["zero", "too-large", "distortion"],
)
def test_bad_loader_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Loader(_source(), **kwargs)


def test_array_source_checks_lengths():
    with pytest.raises(ValueError, match="ArraySource: labels must be of length 3"):
        ArraySource(np.zeros((3, 4, 4, 1)), np.zeros(2))


def test_first_build_says_what_and_where_and_nothing_else(tmp_path, capfd, caplog):
    from attention_jax.data import get_builder

    capfd.readouterr()
    builder = get_builder("digits/plain", data_dir=str(tmp_path))
    out, err = capfd.readouterr()
    assert out == ""  # no "Downloading and preparing dataset Unknown size" banner
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
    assert lines == [f"attention-jax: building dataset digits/plain in {builder.data_dir} "
                     "from the digit scans scikit-learn ships (generated locally, nothing is "
                     "downloaded; once, a few seconds)"], lines  # no bars, no warnings
    assert str(builder.data_dir).startswith(str(tmp_path))
    assert "dataset_info.json" not in caplog.text
    get_builder("digits/plain", data_dir=str(tmp_path))  # prepared: silent
    assert capfd.readouterr() == ("", "")
    # tfds's own switches are as they were.
    from tensorflow_datasets.core.utils import tqdm_utils

    assert tqdm_utils._active is True


def test_unprepared_dataset_error_suggests_what_works(tmp_path):
    from attention_jax.data import DatasetError, get_builder

    with pytest.raises(DatasetError) as err:
        get_builder("mnist", data_dir=str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"load: dataset 'mnist' is not prepared in {tmp_path} and "
                              "downloads are off")
    # tfds needs TensorFlow to prepare mnist, and as_data_source needs array_record files.
    assert "TensorFlow" in message and "pip install tensorflow tensorflow-datasets" in message
    assert "tfds build mnist --file_format array_record --data_dir DIR" in message
    assert "download=True (--download)" in message and "digits/*" in message
