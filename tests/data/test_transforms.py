"""The STN paper's distortions: shapes, determinism, parameters within their ranges, identity
limits, agreement with independent warps (scipy, numpy), bad input."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.data import (
    VARIANTS,
    distort,
    get_distortion,
    output_size,
    random_clutter,
    random_elastic,
    random_projective,
    random_rotation,
    random_rts,
    random_translation,
    source_digits,
)


def _jit(fn, **options):
    """Run a distortion jitted (eager dispatch of the sampler is slow on CPU)."""
    return jax.jit(partial(fn, **options))


@pytest.fixture(scope="module")
def digits():
    images, _ = source_digits()
    return jnp.asarray(images[:16])


@pytest.mark.parametrize("variant", VARIANTS)
def test_shape_dtype_range_and_determinism(digits, variant):
    f = jax.jit(get_distortion(variant))  # one compile: every call below has the same shapes
    key = jax.random.PRNGKey(3)
    out = f(key, digits)
    size = output_size(variant, size=28)
    assert size == {"RTS": 42, "T": 60, "TC": 60}.get(variant, 28)
    assert out.shape == (16, size, size, 1) and out.dtype == jnp.float32
    # Bilinear sampling of [0, 1] images with zero padding stays in [0, 1].
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6
    np.testing.assert_array_equal(out, f(key, digits))
    other = f(jax.random.PRNGKey(4), digits)
    assert float(jnp.abs(out - other).max()) > 0.1
    # Each image of the batch gets its own transform.
    same = f(key, jnp.broadcast_to(digits[:1], digits.shape))
    assert float(jnp.abs(same[0] - same[1]).max()) > 0.1


def test_distort_dispatches_by_variant():
    table = {"R": random_rotation, "RTS": random_rts, "P": random_projective, "E": random_elastic,
             "T": random_translation, "TC": random_clutter}
    assert {v: get_distortion(v) for v in VARIANTS} == table
    with_options = get_distortion("R", max_degrees=0.0)
    assert with_options.func is random_rotation and with_options.keywords == {"max_degrees": 0.0}


@pytest.fixture(scope="module")
def drawn():
    """The parameters each variant draws for 512 (blank) images: enough for range statistics."""
    x = jnp.zeros((512, 28, 28, 1))
    return {v: jax.jit(get_distortion(v, return_params=True))(jax.random.PRNGKey(7), x)[1]
            for v in VARIANTS}


def test_parameters_within_their_ranges(drawn):
    r = {k: np.asarray(v) for k, v in drawn["R"].items()}
    assert np.abs(r["angle"]).max() <= 90 and np.abs(r["angle"]).max() > 80
    rts = {k: np.asarray(v) for k, v in drawn["RTS"].items()}
    assert np.abs(rts["angle"]).max() <= 45 and np.abs(rts["angle"]).max() > 40
    assert rts["scale"].min() >= 0.7 and rts["scale"].max() <= 1.2
    assert rts["scale"].min() < 0.75 and rts["scale"].max() > 1.15
    # The scaled 20x20 content box stays in the 42x42 canvas.
    room = (42 - 20 * rts["scale"]) / 2
    assert np.all(np.abs(rts["shift"]) <= room[:, None] + 1e-4)
    assert np.abs(rts["shift"]).max() > 10
    p = {k: np.asarray(v) for k, v in drawn["P"].items()}
    assert p["scale"].min() >= 0.75 and p["scale"].max() <= 1.0
    assert p["corners"].shape == (512, 4, 2)
    assert p["corners"].std() == pytest.approx(5.0, rel=0.05)
    assert abs(p["corners"].mean()) < 0.25
    e = np.asarray(drawn["E"]["displacement"])
    assert e.shape == (512, 16, 2) and e.std() == pytest.approx(1.5, rel=0.05)
    for v in ("T", "TC"):
        shift = np.asarray(drawn[v]["shift"])
        assert shift.dtype == np.int32 and np.abs(shift).max() == 20  # (60 - 20) / 2
    tc = {k: np.asarray(v) for k, v in drawn["TC"].items()}
    assert np.all(tc["clutter_source"] != np.arange(512)[:, None])  # always another digit
    assert tc["clutter_source"].min() >= 0 and tc["clutter_source"].max() < 512
    assert tc["clutter_crop"].min() == 4 and tc["clutter_crop"].max() == 18  # in the 20x20 box
    assert tc["clutter_position"].min() == 0 and tc["clutter_position"].max() == 54


def test_rotation_matches_scipy_rotate():
    from scipy import ndimage

    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
    out, params = jax.jit(partial(random_rotation, return_params=True))(jax.random.PRNGKey(0), x)
    angles = np.asarray(params["angle"])
    ref = np.stack([ndimage.rotate(np.asarray(x[i, ..., 0]), angles[i], reshape=False, order=1,
                                   mode="constant", cval=0.0) for i in range(2)])[..., None]
    # Same bilinear rotation about the centre; the borders differ (scipy pads differently).
    np.testing.assert_allclose(np.asarray(out)[:, 6:22, 6:22], ref[:, 6:22, 6:22], atol=1e-5)


def test_rts_matches_scipy_affine_transform(digits):
    """The stored (angle, scale, shift) describe the warp: scipy redoes it from them alone."""
    from scipy import ndimage

    out, params = _jit(random_rts, return_params=True)(jax.random.PRNGKey(2), digits[:4])
    placed = np.pad(np.asarray(digits[:4, ..., 0]), ((0, 0), (7, 7), (7, 7)))
    for i in range(4):
        a = np.deg2rad(float(params["angle"][i]))
        s = float(params["scale"][i])
        sx, sy = (float(v) for v in params["shift"][i])
        # Output pixel (row, col) reads input centre + R(angle)/s (p - centre - shift), with
        # R(angle) = [[c, -s], [s, c]] on (x, y); in scipy's (row, col) order:
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / s
        centre = np.array([20.5, 20.5])
        offset = centre - rot @ (centre + np.array([sy, sx]))
        ref = ndimage.affine_transform(placed[i], rot, offset=offset, order=1, mode="constant")
        np.testing.assert_allclose(np.asarray(out[i, ..., 0]), ref, atol=2e-4)


def test_translation_is_an_exact_paste(digits):
    out, params = _jit(random_translation, return_params=True)(jax.random.PRNGKey(1), digits)
    out, shift = np.asarray(out), np.asarray(params["shift"])
    for i in range(16):
        ref = np.zeros((60 + 56, 60 + 56))
        top, left = 28 + 16 + shift[i, 1], 28 + 16 + shift[i, 0]
        ref[top:top + 28, left:left + 28] = np.asarray(digits[i, ..., 0])
        np.testing.assert_array_equal(out[i, ..., 0], ref[28:88, 28:88])


def test_clutter_is_the_translated_digit_plus_pieces_of_the_others(digits):
    out, params = _jit(random_clutter, return_params=True)(jax.random.PRNGKey(5), digits)
    plain = _jit(random_translation)(jax.random.split(jax.random.PRNGKey(5), 4)[0], digits)
    out, plain = np.asarray(out), np.asarray(plain)
    p = {k: np.asarray(v) for k, v in params.items()}
    x = np.asarray(digits)
    for i in range(16):
        ref = plain[i].copy()
        for k in range(4):
            (cx, cy), (px, py) = p["clutter_crop"][i, k], p["clutter_position"][i, k]
            piece = x[p["clutter_source"][i, k], cy:cy + 6, cx:cx + 6]
            ref[py:py + 6, px:px + 6] = np.maximum(ref[py:py + 6, px:px + 6], piece)
        np.testing.assert_array_equal(out[i], ref)


def _homography(src, dst):
    """The 3x3 homography taking four points ``src`` (4, 2) to ``dst`` (4, 2), in numpy."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    return np.append(np.linalg.solve(np.asarray(a, float), np.asarray(b, float)), 1).reshape(3, 3)


def test_projective_moves_the_corners_it_reports():
    """A bright pixel lands where the homography through the reported corners sends it."""
    x = jnp.zeros((1, 64, 64, 1)).at[0, 8, 8, 0].set(1.0)  # near the top-left corner
    out, params = _jit(random_projective, corner_std=3.0, scale=(0.6, 0.6), return_params=True)(
        jax.random.PRNGKey(0), x)
    img = np.asarray(out[0, ..., 0])
    ys, xs = np.nonzero(img > 1e-6)
    w = img[ys, xs]
    found = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()]) + 0.5
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = corners * 0.6 + np.asarray(params["corners"][0]) / 32.0  # pixels -> normalised
    q = _homography(corners, moved) @ np.array([8.5 / 32 - 1, 8.5 / 32 - 1, 1.0])
    np.testing.assert_allclose(found, (q[:2] / q[2] + 1) * 32, atol=0.3)
    assert np.abs(np.asarray(params["corners"])).max() > 1.0  # the corners did move


def test_bfloat16_dtype_preserved(digits):
    out = _jit(distort, variant="R")(jax.random.PRNGKey(0), digits.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_identity_limits(digits):
    key = jax.random.PRNGKey(0)
    rot = _jit(random_rotation, max_degrees=0.0)(key, digits)
    np.testing.assert_allclose(rot, digits, atol=1e-5)
    proj = _jit(random_projective, corner_std=0.0, scale=(1.0, 1.0))(key, digits)
    np.testing.assert_allclose(proj, digits, atol=1e-5)
    np.testing.assert_allclose(_jit(random_elastic, sigma=0.0)(key, digits), digits, atol=1e-5)
    # No rotation, scale 1 and no room to move (content = whole canvas): centred padding.
    rts = _jit(random_rts, max_degrees=0.0, scale=(1.0, 1.0), content=42 / 28)(key, digits)
    np.testing.assert_allclose(rts[:, 7:35, 7:35], digits, atol=1e-5)
    assert float(jnp.abs(rts).sum()) == pytest.approx(float(digits.sum()), rel=1e-5)


def test_rotation_and_rts_preserve_ink(digits):
    key = jax.random.PRNGKey(5)
    rot = _jit(random_rotation)(key, digits)
    # Digits sit in the central 20x20 box: a rotation keeps (almost) all of their ink.
    np.testing.assert_allclose(rot.sum((1, 2, 3)), digits.sum((1, 2, 3)), rtol=0.05)
    rts = _jit(random_rts, max_degrees=0.0, scale=(1.0, 1.0))(key, digits)
    np.testing.assert_allclose(rts.sum((1, 2, 3)), digits.sum((1, 2, 3)), rtol=0.02)


def test_rts_scale_changes_ink_by_its_square(digits):
    key = jax.random.PRNGKey(6)
    for s in (0.7, 1.2):
        out = _jit(random_rts, max_degrees=0.0, scale=(s, s))(key, digits)
        np.testing.assert_allclose(out.sum() / digits.sum(), s * s, rtol=0.03)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: distort(jax.random.PRNGKey(0), x, variant="X"),
         "get_distortion: variant must be one of 'R', 'RTS', 'P', 'E', 'T', 'TC', got 'X'"),
        (lambda x: random_rotation(jax.random.PRNGKey(0), x[..., 0]),
         r"random_rotation: x must be rank 4 \(N, H, W, C\)"),
        (lambda x: random_rotation(jax.random.PRNGKey(0), (x * 255).astype(jnp.uint8)),
         "random_rotation: x must be a floating-point array"),
        (lambda x: random_rotation(jax.random.PRNGKey(0), x, max_degrees=-1.0),
         "random_rotation: max_degrees must be non-negative, got -1.0"),
        (lambda x: random_rts(jax.random.PRNGKey(0), x[:, :, :20]),
         "random_rts: x must be square images no larger than canvas=42"),
        (lambda x: random_rts(jax.random.PRNGKey(0), x, canvas=20),
         "random_rts: x must be square images no larger than canvas=20"),
        (lambda x: random_rts(jax.random.PRNGKey(0), x, scale=(1.2, 0.7)),
         r"random_rts: scale must be a pair \(low, high\) with 0 < low <= high"),
        (lambda x: random_projective(jax.random.PRNGKey(0), x, corner_std=-1.0),
         "random_projective: corner_std must be non-negative"),
        (lambda x: random_elastic(jax.random.PRNGKey(0), x, control=1),
         "random_elastic: control must be an integer >= 2"),
        (lambda x: random_elastic(jax.random.PRNGKey(0), x, sigma=float("nan")),
         "random_elastic: sigma must be non-negative, got nan"),
        (lambda x: random_translation(jax.random.PRNGKey(0), x, canvas=20),
         "random_translation: x must be square images no larger than canvas=20"),
        (lambda x: random_clutter(jax.random.PRNGKey(0), x[:1]),
         "random_clutter: x must be a batch of at least 2 images"),
        (lambda x: random_clutter(jax.random.PRNGKey(0), x, piece_size=21),
         "random_clutter: piece_size must be at most the content box"),
        (lambda x: output_size("Q"),
         "output_size: variant must be one of 'R', 'RTS', 'P', 'E', 'T', 'TC', got 'Q'"),
    ],
    ids=["variant", "rank", "dtype", "r-degrees", "rts-nonsquare", "rts-canvas", "rts-scale",
         "p-std", "e-control", "e-sigma", "t-canvas", "tc-batch", "tc-piece", "output-size"],
)
def test_bad_input(digits, call, match):
    with pytest.raises(ValueError, match=match):
        call(digits)
