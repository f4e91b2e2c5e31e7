"""The embedded 8x8 digits tfds builder (fast tests): written and read back, split by source,
deterministic."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attention_jax.data import (
    CONFIG_NAMES,
    DatasetError,
    Digits,
    get_builder,
    list_datasets,
    load,
    source_digits,
    split_sources,
)


def test_source_digits_are_mnist_like():
    images, labels = source_digits()
    assert images.shape == (1797, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and set(np.unique(labels)) == set(range(10))
    assert images.min() == 0.0 and images.max() == 1.0
    # The 20x20 digit sits in the centre of the 28x28 frame, like MNIST: a 4-pixel empty border.
    assert np.all(images[:, :4] == 0) and np.all(images[:, -4:] == 0)
    assert np.all(images[:, :, :4] == 0) and np.all(images[:, :, -4:] == 0)


def test_split_is_disjoint_covering_and_stratified():
    _, labels = source_digits()
    train, test = split_sources(labels, test_fraction=1 / 6)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(len(labels)))
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    np.testing.assert_allclose(share, 1 / 6, atol=0.01)
    again = split_sources(labels, test_fraction=1 / 6)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(split_sources(labels, test_fraction=1 / 6, seed=1)[1], test)


def test_builder_writes_array_record_and_reads_back(digits_dir):
    builder = Digits(config="R", data_dir=digits_dir)
    assert builder.is_prepared()
    files = list(tfds.core.Path(builder.data_dir).glob("*.array_record*"))
    assert len(files) >= 2
    sources = builder.as_data_source()
    train, test = sources["train"], sources["test"]
    _, labels = source_digits()
    n_train, n_test = (len(s) for s in split_sources(labels, test_fraction=1 / 6))
    assert (len(train), len(test)) == (4 * n_train, 4 * n_test)
    ex = train[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    assert 0 <= int(ex["label"]) < 10
    assert int(ex["label"]) == labels[int(ex["source_id"])]
    assert builder.info.features["label"].num_classes == 10


def test_no_source_image_in_both_splits(digits_dir):
    sources = Digits(config="R", data_dir=digits_dir).as_data_source()
    ids = {split: {int(r["source_id"]) for r in src.__getitems__(list(range(len(src))))}
           for split, src in sources.items()}
    assert ids["train"] and ids["test"]
    assert not ids["train"] & ids["test"]
    assert len(ids["train"] | ids["test"]) == 1797


def test_plain_config_is_the_quantised_source(digits_dir):
    images, labels = source_digits()
    test = load("digits/plain", split="test", data_dir=digits_dir)
    recs = test.__getitems__(list(range(20)))
    for r in recs:
        src = int(r["source_id"])
        expected = np.round(images[src] * 255).astype(np.uint8)
        np.testing.assert_array_equal(r["image"], expected)
        assert int(r["label"]) == labels[src]


def test_generation_is_deterministic():
    # Two builders generate byte-identical examples (the test split of R, without writing).
    gen = [dict(Digits(config="R", data_dir="/nonexistent")._generate_examples(split="test"))
           for _ in range(2)]
    assert gen[0].keys() == gen[1].keys() and len(gen[0]) > 1000
    for key in list(gen[0])[::97]:
        np.testing.assert_array_equal(gen[0][key]["image"], gen[1][key]["image"])
    # ...and the four copies of one scan differ (each is its own random distortion).
    src = next(iter(gen[0])).split("_")[0]
    copies = [gen[0][f"{src}_{c}"]["image"] for c in range(4)]
    assert not np.array_equal(copies[0], copies[1])


def test_rts_config_has_42x42_canvas():
    assert Digits(config="RTS", data_dir="/nonexistent").info.features["image"].shape == (
        42, 42, 1)
    assert list_datasets()[:len(CONFIG_NAMES)] == [f"digits/{c}" for c in CONFIG_NAMES]


@pytest.mark.parametrize("name", ["digits/XYZ", "no_such_dataset", ""])
def test_unknown_dataset_lists_known_ones(name, tmp_path):
    with pytest.raises(DatasetError, match="digits/R, digits/RTS, digits/P, digits/E"):
        get_builder(name, data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_unprepared_tfds_dataset_fails_at_once_offline(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DatasetError, match="'mnist' is not prepared .* downloads are off"):
        load("mnist", split="train", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 10  # no minutes-long download retry loop


def test_unknown_split(digits_dir):
    with pytest.raises(ValueError, match="load: split must be one of 'train', 'test'"):
        load("digits/plain", split="validation", data_dir=digits_dir)
