"""attention_jax.viz on the Agg backend: the figures hold the arrays they were given, where
they should be (image data, extents, bar heights, outlines, markers), and bad input is refused."""

import sys

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from attention_jax import functional as F  # noqa: E402
from attention_jax import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(h=12, w=16, c=None, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((h, w) if c is None else (h, w, c))


def test_show_image_draws_the_pixels_at_their_centres():
    img = _image(c=1)
    ax = viz.show_image(img[None], title="digit")  # a batch of one is accepted
    (shown,) = ax.images
    np.testing.assert_array_equal(shown.get_array(), img[..., 0])
    assert shown.get_extent() == [-0.5, 15.5, 11.5, -0.5]
    assert shown.get_clim() == (0.0, 1.0) and ax.get_title() == "digit"
    rgb = _image(c=3)
    np.testing.assert_array_equal(viz.show_image(rgb).images[0].get_array(), rgb)


def test_overlay_stretches_a_coarse_map_over_the_image():
    img, amap = _image(), np.arange(12.0).reshape(3, 4)
    ax = viz.overlay(img, amap[None, :, :, None], alpha=0.4, colorbar=True)
    base, top = ax.images
    np.testing.assert_array_equal(base.get_array(), img)
    np.testing.assert_array_equal(top.get_array(), amap)
    assert top.get_extent() == base.get_extent() == [-0.5, 15.5, 11.5, -0.5]
    assert top.get_alpha() == 0.4 and top.get_clim() == (0.0, 11.0)
    assert len(ax.figure.axes) == 2  # the colour bar
    # Rendered, the map's top-left cell (value 0) covers the image's top-left 4x4 block.
    fig, ax2 = plt.subplots()
    viz.overlay(np.zeros((12, 16)), amap, ax=ax2, alpha=1.0, cmap="gray")
    assert ax2.images[1].get_array()[0, 0] == 0 and ax2.images[1].get_array()[2, 3] == 11


def test_channel_weights_bars_are_the_weights():
    w = np.array([0.2, 0.9, 0.5, 0.1])
    ax = viz.channel_weights(w.reshape(1, 1, 1, 4), title="SE")
    np.testing.assert_allclose([p.get_height() for p in ax.patches], w)
    np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in ax.patches], range(4))
    assert ax.get_ylim() == (0.0, 1.0)
    ax = viz.channel_weights(w, sort=True, ylim=None)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [0.9, 0.5, 0.2, 0.1])


def test_sampling_outline_of_the_identity_and_a_zoom():
    ident = jnp.broadcast_to(jnp.eye(2, 3), (1, 2, 3))
    grid = F.affine_grid(ident, (1, 8, 10, 1))
    outline = viz.sampling_outline(grid, (8, 10))
    assert outline.shape == (2 * (8 + 10) - 3, 2)
    # The identity reads the input's own pixel centres: corners (0, 0), (9, 0), (9, 7), (0, 7).
    np.testing.assert_allclose(outline[[0, 9, 16, 25, -1]],
                               [[0, 0], [9, 0], [9, 7], [0, 7], [0, 0]], atol=1e-5)
    # Half the size about the centre, on a 20x20 input: a box from 5 to 14 (pixel centres of
    # the 10x10 output mapped into the input).
    half = F.affine_grid(jnp.asarray([[[0.5, 0, 0], [0, 0.5, 0]]]), (1, 10, 10, 1))
    box = viz.sampling_outline(half[0], (20, 20))
    np.testing.assert_allclose(box.min(0), [5.0, 5.0], atol=1e-5)
    np.testing.assert_allclose(box.max(0), [14.0, 14.0], atol=1e-5)


def test_stn_grid_puts_inputs_above_outputs_with_their_outlines():
    rng = np.random.default_rng(1)
    x, y = rng.random((5, 20, 20, 1)), rng.random((5, 10, 10, 1))
    theta = jnp.broadcast_to(jnp.asarray([[0.5, 0, 0.2], [0, 0.5, -0.1]]), (5, 2, 3))
    grids = F.affine_grid(theta, (5, 10, 10, 1))
    fig = viz.stn_grid(x, y, grids=grids, labels=list("abcde"), n=4)
    axes = np.asarray(fig.axes).reshape(2, 4)
    for i in range(4):
        np.testing.assert_array_equal(axes[0, i].images[0].get_array(), x[i, ..., 0])
        np.testing.assert_array_equal(axes[1, i].images[0].get_array(), y[i, ..., 0])
        (line,) = axes[0, i].lines
        np.testing.assert_allclose(np.stack(line.get_data(), -1),
                                   viz.sampling_outline(grids[i], (20, 20)))
        assert axes[0, i].get_title() == "abcde"[i]
    assert axes[0, 0].get_ylabel() == "input" and axes[1, 0].get_ylabel() == "transformer output"
    # The outline is the shifted, halved box: x from 5 + 2 to 14 + 2, y from 5 - 1 to 14 - 1.
    xs, ys = axes[0, 0].lines[0].get_data()
    np.testing.assert_allclose([min(xs), max(xs), min(ys), max(ys)], [7, 16, 4, 13], atol=1e-4)


def test_query_attention_shows_the_query_row_and_marks_the_query():
    h, w = 3, 4
    att = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (h * w, h * w)), -1)
    img = _image(12, 16)
    ax = viz.query_attention(img, np.asarray(att)[None, None], (1, 2), map_size=(h, w))
    np.testing.assert_allclose(ax.images[1].get_array(), np.asarray(att)[1 * w + 2].reshape(h, w))
    (marker,) = ax.lines
    # Cell (1, 2) of a 3x4 map over a 12x16 image: centre at column 2.5 * 4 - 0.5, row 1.5 * 4
    # - 0.5.
    np.testing.assert_allclose(np.ravel(marker.get_data()), [9.5, 5.5])
    assert ax.get_title() == "query (1, 2)"
    # (h, w, h, w) maps need no map_size.
    four = np.asarray(att).reshape(h, w, h, w)
    ax = viz.query_attention(img, four, (2, 3))
    np.testing.assert_allclose(ax.images[1].get_array(), four[2, 3])


def test_learning_curves_mean_and_band():
    xs = np.array([1, 2, 3])
    ys = np.array([[10.0, 5.0, 3.0], [12.0, 7.0, 5.0]])
    ax = viz.learning_curves({"CNN": (xs, ys), "ST-CNN": (xs, ys[0] / 2)}, log_y=True)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [11.0, 6.0, 4.0])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [5.0, 2.5, 1.5])
    assert len(ax.collections) == 1  # a band only where there are several runs
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(11.0 + np.sqrt(2)) and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CNN", "ST-CNN"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: viz.show_image(np.zeros((4, 4, 2))), r"show_image: image must be an image"),
        (lambda: viz.overlay(np.zeros((4, 4)), np.zeros((2, 2, 2))),
         r"overlay: attention must be a map \(h, w\)"),
        (lambda: viz.overlay(np.zeros((4, 4)), np.zeros((2, 2)), alpha=2.0),
         r"overlay: alpha must be in \[0, 1\], got 2.0"),
        (lambda: viz.channel_weights(np.zeros((2, 3))),
         r"channel_weights: weights must be one weight per channel"),
        (lambda: viz.sampling_outline(np.zeros((4, 4, 3)), (4, 4)),
         r"sampling_outline: grid must be a grid \(Ho, Wo, 2\)"),
        (lambda: viz.stn_grid(np.zeros((3, 4, 4)), np.zeros((2, 4, 4))),
         "stn_grid: outputs must be a batch as long as inputs"),
        (lambda: viz.query_attention(np.zeros((4, 4)), np.zeros((6, 6)), (0, 0)),
         r"query_attention: map_size must be \(h, w\) with h \* w = 6"),
        (lambda: viz.query_attention(np.zeros((4, 4)), np.zeros((4, 4)), (2, 0)),
         r"query_attention: query must be a \(row, col\) inside the 2x2 map"),
        (lambda: viz.query_attention(np.zeros((4, 4)), np.zeros((4, 5)), (0, 0)),
         r"query_attention: attention must be weights \(T, T\)"),
        (lambda: viz.learning_curves({"a": (np.arange(3), np.zeros((2, 4)))}),
         "learning_curves: curves must be label -> "),
    ],
    ids=["image", "map", "alpha", "weights", "grid", "stn-batch", "map-size", "query",
         "attention", "curves"],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_importing_viz_does_not_import_matplotlib():
    import subprocess

    code = ("import sys; import attention_jax.viz; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
