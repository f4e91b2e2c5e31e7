"""The STN paper's distortions: shapes, determinism, identity limits, bad input."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.data import (
    VARIANTS,
    distort,
    get_distortion,
    random_elastic,
    random_projective,
    random_rotation,
    random_rts,
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
    size = 42 if variant == "RTS" else 28
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
    table = {"R": random_rotation, "RTS": random_rts, "P": random_projective, "E": random_elastic}
    assert {v: get_distortion(v) for v in VARIANTS} == table


def test_bfloat16_dtype_preserved(digits):
    out = _jit(distort, variant="R")(jax.random.PRNGKey(0), digits.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_identity_limits(digits):
    key = jax.random.PRNGKey(0)
    rot = _jit(random_rotation, max_degrees=0.0)(key, digits)
    np.testing.assert_allclose(rot, digits, atol=1e-5)
    proj = _jit(random_projective, corner_std=0.0, scale=(1.0, 1.0))(key, digits)
    np.testing.assert_allclose(proj, digits, atol=1e-5)
    np.testing.assert_allclose(_jit(random_elastic, max_displacement=0.0)(key, digits), digits,
                               atol=1e-5)
    # No rotation, scale 1 and no room to move (content = whole canvas): centred padding.
    rts = _jit(random_rts, max_degrees=0.0, scale=(1.0, 1.0), content=42 / 28)(key, digits)
    np.testing.assert_allclose(rts[:, 7:35, 7:35], digits, atol=1e-5)
    assert float(jnp.abs(rts).sum()) == pytest.approx(float(digits.sum()), rel=1e-5)


def test_rotation_matches_scipy_rotate():
    from scipy import ndimage

    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
    key = jax.random.PRNGKey(0)
    out = np.asarray(jax.jit(random_rotation)(key, x))
    # The angles random_rotation draws from its key (degrees, one per image).
    angles = np.asarray(jax.random.uniform(key, (2,), minval=-90.0, maxval=90.0))
    ref = np.stack([ndimage.rotate(np.asarray(x[i, ..., 0]), angles[i], reshape=False, order=1,
                                   mode="constant", cval=0.0) for i in range(2)])[..., None]
    # Same bilinear rotation about the centre; the borders differ (scipy pads differently).
    np.testing.assert_allclose(out[:, 6:22, 6:22], ref[:, 6:22, 6:22], atol=1e-5)


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
         "get_distortion: variant must be one of 'R', 'RTS', 'P', 'E', got 'X'"),
        (lambda x: random_rotation(jax.random.PRNGKey(0), x[..., 0]),
         r"random_rotation: x must be rank 4 \(N, H, W, C\)"),
        (lambda x: random_rotation(jax.random.PRNGKey(0), (x * 255).astype(jnp.uint8)),
         "random_rotation: x must be a floating-point array"),
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
    ],
    ids=["variant", "rank", "dtype", "rts-nonsquare", "rts-canvas", "rts-scale", "p-std",
         "e-control"],
)
def test_bad_input(digits, call, match):
    with pytest.raises(ValueError, match=match):
        call(digits)
