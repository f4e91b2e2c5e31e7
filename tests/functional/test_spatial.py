"""Spatial transformer forwards: transform parameterisations against their formulas and
PyTorch's affine_grid, the localisation net against torch's pooling ops, the whole transformer
at the identity, check_grads, empty batches, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import functional as F
from tests.gradcheck import check_grads

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 7, 9, 3)).astype(np.float32)


@pytest.mark.parametrize("transform,count", [("affine", 6), ("similarity", 4),
                                             ("translation", 2), ("perspective", 8)])
def test_transform_num_params(transform, count):
    assert F.transform_num_params(transform) == count
    assert F.identity_transform_params(transform).shape == (count,)


def test_tps_num_params_and_identity():
    assert F.transform_num_params("tps", tps_grid_size=(2, 3)) == 12
    p = F.identity_transform_params("tps", tps_grid_size=(2, 3))
    np.testing.assert_array_equal(p.reshape(6, 2), F.tps_base_points((2, 3)))


@pytest.mark.parametrize("transform", F.TRANSFORMS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_give_the_identity_grid(transform, align_corners):
    size = (2, 5, 6, 1)
    p = jnp.tile(jnp.asarray(F.identity_transform_params(transform))[None], (2, 1))
    grid, _ = F.transform_grid(p, size, transform=transform, align_corners=align_corners)
    theta = torch.eye(2, 3).expand(2, 2, 3)
    want = torch.nn.functional.affine_grid(theta, (2, 1, 5, 6), align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(grid), want.numpy(), atol=1e-5)


def _torch_grid(theta: np.ndarray, size, align_corners=False) -> np.ndarray:
    n, h, w, c = size
    return torch.nn.functional.affine_grid(torch.from_numpy(theta), (n, c, h, w),
                                           align_corners=align_corners).numpy()


def test_affine_matches_torch():
    theta = RNG.normal(size=(2, 2, 3)).astype(np.float32)
    grid, aux = F.transform_grid(jnp.asarray(theta.reshape(2, 6)), (2, 5, 6, 1))
    np.testing.assert_allclose(np.asarray(aux["matrix"]), theta)
    np.testing.assert_allclose(np.asarray(grid), _torch_grid(theta, (2, 5, 6, 1)), atol=1e-5)


def test_similarity_and_translation_matrices():
    s, a, tx, ty = 1.3, 0.4, 0.2, -0.1
    grid, aux = F.transform_grid(jnp.asarray([[s, a, tx, ty]]), (1, 5, 6, 1),
                                 transform="similarity")
    theta = np.array([[[s * np.cos(a), -s * np.sin(a), tx], [s * np.sin(a), s * np.cos(a), ty]]],
                     np.float32)
    np.testing.assert_allclose(np.asarray(aux["matrix"]), theta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grid), _torch_grid(theta, (1, 5, 6, 1)), atol=1e-5)
    grid, aux = F.transform_grid(jnp.asarray([[tx, ty]]), (1, 5, 6, 1), transform="translation")
    theta = np.array([[[1, 0, tx], [0, 1, ty]]], np.float32)
    np.testing.assert_allclose(np.asarray(aux["matrix"]), theta)
    np.testing.assert_allclose(np.asarray(grid), _torch_grid(theta, (1, 5, 6, 1)), atol=1e-5)


def test_perspective_is_the_homography():
    """params = the row-major 3x3 homography without h33 = 1; points map projectively."""
    m = np.eye(3)
    m[:2] += RNG.normal(size=(2, 3)) * 0.2
    m[2, :2] = [0.3, -0.2]
    grid, aux = F.transform_grid(jnp.asarray(m.reshape(1, 9)[:, :8], jnp.float32), (1, 4, 5, 1),
                                 transform="perspective", align_corners=True)
    np.testing.assert_allclose(np.asarray(aux["matrix"])[0], m, rtol=1e-6, atol=1e-6)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 5), indexing="ij")
    h = np.einsum("ij,hwj->hwi", m, np.stack([xs, ys, np.ones_like(xs)], -1))
    np.testing.assert_allclose(np.asarray(grid)[0], h[..., :2] / h[..., 2:], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("transform", ["similarity", "perspective", "tps"])
def test_transform_grid_check_grads(x64, transform):
    p = jnp.asarray(F.identity_transform_params(transform), jnp.float64)[None]
    p = p + 0.1 * jnp.asarray(RNG.normal(size=p.shape))
    f = lambda p: F.transform_grid(p, (1, 3, 4, 1), transform=transform)[0]
    check_grads(f, (p,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_localisation_net_matches_torch_pipeline():
    """conv1 -> relu -> 2x2 max pool (ceil) -> conv2 -> relu -> pool -> adaptive avg pool ->
    flatten in (Ph, Pw, F2) order -> fc1 -> relu -> fc2, against torch's ops (1x1 convs)."""
    w1 = RNG.normal(size=(3, 4)).astype(np.float32)
    w2 = RNG.normal(size=(4, 5)).astype(np.float32)
    wf1 = RNG.normal(size=(2 * 3 * 5, 6)).astype(np.float32)
    wf2 = RNG.normal(size=(6, 2)).astype(np.float32)
    y = F.localisation_net(jnp.asarray(X), conv1=lambda a: a @ w1, conv2=lambda a: a @ w2,
                           fc1=lambda a: a @ wf1, fc2=lambda a: a @ wf2, pool_size=(2, 3))
    t = torch.from_numpy(X).permute(0, 3, 1, 2)
    tf = torch.nn.functional
    t = tf.max_pool2d(tf.relu(torch.einsum("nchw,cd->ndhw", t, torch.from_numpy(w1))), 2,
                      ceil_mode=True)
    t = tf.max_pool2d(tf.relu(torch.einsum("nchw,cd->ndhw", t, torch.from_numpy(w2))), 2,
                      ceil_mode=True)
    t = tf.adaptive_avg_pool2d(t, (2, 3)).permute(0, 2, 3, 1).reshape(2, -1)
    want = tf.relu(t @ torch.from_numpy(wf1)) @ torch.from_numpy(wf2)
    np.testing.assert_allclose(np.asarray(y), want.numpy(), rtol=1e-5, atol=1e-5)
    yg = F.localisation_net(jnp.asarray(X), conv1=lambda a: a @ w1, conv2=lambda a: a @ w2,
                            fc1=lambda a: a, fc2=lambda a: a, pool_size=None)
    assert yg.shape == (2, 5)  # global average: (N, F2)


def _identity_loc(transform):
    p = jnp.asarray(F.identity_transform_params(transform))
    return lambda x: jnp.tile(p[None], (x.shape[0], 1))


@pytest.mark.parametrize("transform", ["affine", "perspective", "tps"])
def test_spatial_transformer_identity(transform):
    y, aux = F.spatial_transformer(jnp.asarray(X), localisation=_identity_loc(transform),
                                   transform=transform, return_transform=True)
    np.testing.assert_allclose(np.asarray(y), X, atol=1e-4)
    assert aux["grid"].shape == (2, 7, 9, 2) and aux["params"].shape[0] == 2


def test_spatial_transformer_out_size_matches_torch():
    theta = RNG.normal(size=(2, 2, 3)).astype(np.float32) * 0.3 + np.eye(2, 3, dtype=np.float32)
    loc = lambda x: jnp.asarray(theta.reshape(2, 6))
    y = F.spatial_transformer(jnp.asarray(X), localisation=loc, out_size=(4, 5),
                              padding_mode="border")
    t = torch.from_numpy(X).permute(0, 3, 1, 2)
    g = torch.nn.functional.affine_grid(torch.from_numpy(theta), (2, 3, 4, 5), align_corners=False)
    want = torch.nn.functional.grid_sample(t, g, padding_mode="border", align_corners=False)
    np.testing.assert_allclose(np.asarray(y), want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_empty_batch():
    x = jnp.zeros((0, 7, 9, 3))
    y = F.spatial_transformer(x, localisation=_identity_loc("affine"))
    assert y.shape == (0, 7, 9, 3)
    h = F.localisation_net(x, conv1=lambda a: a, conv2=lambda a: a, fc1=lambda a: a,
                           fc2=lambda a: a)
    assert h.shape == (0, 4 * 4 * 3)


def test_bad_input():
    loc = _identity_loc("affine")
    with pytest.raises(ValueError, match=r"transform_grid: params must be shape \(\.\.\., 6\)"):
        F.transform_grid(jnp.zeros((2, 4)), (2, 4, 4, 1), transform="affine")
    with pytest.raises(ValueError, match=r"transform_num_params: transform must be one of"):
        F.transform_num_params("rigid")
    with pytest.raises(ValueError, match=r"transform_grid: tps_grid_size must be an integer "
                                         r">= 2"):
        F.transform_grid(jnp.zeros((2, 6)), (2, 4, 4, 1), transform="tps", tps_grid_size=(1, 3))
    with pytest.raises(ValueError, match=r"transform_grid: params must be a floating-point array"):
        F.transform_grid(jnp.zeros((2, 6), jnp.int32), (2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"identity_transform_params: tps_grid_size must be"):
        F.identity_transform_params("tps", tps_grid_size=(1, 3))
    with pytest.raises(ValueError, match=r"spatial_transformer: mode must be one of"):
        F.spatial_transformer(jnp.asarray(X), localisation=loc, mode="area")
    with pytest.raises(ValueError, match=r"spatial_transformer: out_size must be None or a pair"):
        F.spatial_transformer(jnp.asarray(X), localisation=loc, out_size=(4,))
    with pytest.raises(ValueError, match=r"localisation_net: pool_size must be None or a pair"):
        F.localisation_net(jnp.asarray(X), conv1=loc, conv2=loc, fc1=loc, fc2=loc,
                           pool_size=(0, 2))


# --- Found by tests/test_properties.py --------------------------------------------------------

def test_transform_grid_names_itself():
    """Its size and tps_grid_size errors name transform_grid (they named affine_grid and
    transform_num_params)."""
    params = jnp.zeros((2, 6))
    with pytest.raises(ValueError, match=r"transform_grid: size must be a 4-tuple"):
        F.transform_grid(params, (3, 2))
    with pytest.raises(ValueError, match=r"transform_grid: size must be batch 2"):
        F.transform_grid(params, (3, 3, 2, 1))
    with pytest.raises(ValueError, match=r"transform_grid: tps_grid_size must be a pair"):
        F.transform_grid(jnp.zeros((2, 18)), (2, 3, 2, 1), transform="tps", tps_grid_size=(3,))


def test_transform_grid_tps_empty_batch():
    """N = 0 with a TPS: an empty grid (reshape(0, -1, 2) raised a raw ValueError)."""
    grid, aux = F.transform_grid(jnp.zeros((0, 18)), (0, 3, 2, 1), transform="tps")
    assert grid.shape == (0, 3, 2, 2) and aux["control_points"].shape == (0, 9, 2)
