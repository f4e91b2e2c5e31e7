"""Plans of the spatial transformer and its localisation network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import plans as P


@pytest.mark.parametrize("pool_size,fc1_in", [((4, 4), 16 * 16), ((2, 3), 16 * 6), (None, 16)])
def test_localisation_net_fc1_width(pool_size, fc1_in):
    assert P.LocalisationNetPlan.create(3, pool_size=pool_size).fc1_in == fc1_in


def test_localisation_net_bias_init():
    p = P.LocalisationNetPlan.create(3, out_features=3, final_bias=[1, 2, 3])
    init = p.fc2_bias_init()
    np.testing.assert_array_equal(init(jax.random.key(0), (3,), jnp.float32), [1.0, 2.0, 3.0])
    zero = P.LocalisationNetPlan.create(3).fc2_bias_init()(jax.random.key(0), (6,))
    np.testing.assert_array_equal(zero, np.zeros(6))


@pytest.mark.parametrize("transform,count", [("affine", 6), ("similarity", 4), ("tps", 18)])
def test_spatial_transformer_loc(transform, count):
    p = P.SpatialTransformerPlan.create(3, transform=transform)
    assert p.loc.out_features == count and len(p.loc.final_bias) == count
    assert p.loc.final_bias[0] == (1.0 if transform in ("affine", "similarity") else -1.0)


@pytest.mark.parametrize("make,msg", [
    (lambda: P.SpatialTransformerPlan.create(0),
     r"SpatialTransformer: channels must be an integer >= 1, got 0"),
    # Every option of the module is named by it (the transform's was transform_num_params's,
    # mode/padding_mode/out_size were checked only by the forward, found by
    # tests/test_properties.py).
    (lambda: P.SpatialTransformerPlan.create(3, transform="rigid"),
     r"SpatialTransformer: transform must be one of"),
    (lambda: P.SpatialTransformerPlan.create(3, transform="tps", tps_grid_size=(1, 3)),
     r"SpatialTransformer: tps_grid_size must be an integer >= 2, got 1"),
    (lambda: P.SpatialTransformerPlan.create(3, mode="area"),
     r"SpatialTransformer: mode must be one of 'bilinear'"),
    (lambda: P.SpatialTransformerPlan.create(3, padding_mode="wrap"),
     r"SpatialTransformer: padding_mode must be one of 'zeros'"),
    (lambda: P.SpatialTransformerPlan.create(3, out_size=(0, 3)),
     r"SpatialTransformer: out_size must be an integer >= 1, got 0"),
    (lambda: P.SpatialTransformerPlan.create(3, features=(8, 0)),
     r"SpatialTransformer: features must be an integer >= 1, got 0"),
    (lambda: P.LocalisationNetPlan.create(3, pool_size=(4,)),
     r"LocalisationNet: pool_size must be a pair of integers >= 1"),
    (lambda: P.LocalisationNetPlan.create(3, features=(8, 0)),
     r"LocalisationNet: features must be an integer >= 1, got 0"),
    (lambda: P.LocalisationNetPlan.create(3, out_features=2, final_bias=(1.0,)),
     r"LocalisationNet: final_bias must be None or 2 values"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_spatial_transformer_needs_pixels():
    p = P.SpatialTransformerPlan.create(3)
    p.check_input(jnp.zeros((0, 4, 4, 3)))  # an empty batch is fine
    with pytest.raises(ValueError, match=r"SpatialTransformer: x must be H, W >= 1"):
        p.check_input(jnp.zeros((2, 0, 4, 3)))
