"""What plans share: conv padding in PyTorch's spelling, 'same' padding, frozen plans."""

import dataclasses

import pytest

from attention_jax import plans as P


@pytest.mark.parametrize("padding,ndim,want", [
    (0, 2, ((0, 0), (0, 0))),
    (2, 2, ((2, 2), (2, 2))),
    (1, 1, ((1, 1),)),
    ((0, 3), 2, ((0, 0), (3, 3))),
    ([(1, 2), (3, 4)], 2, ((1, 2), (3, 4))),
    (((0, 0), 2), 2, ((0, 0), (2, 2))),
    ("SAME", 2, "SAME"),
    ("VALID", 1, "VALID"),
])
def test_conv_padding(padding, ndim, want):
    assert P.conv_padding(padding, ndim) == want


@pytest.mark.parametrize("padding", [-1, 1.0, True, (1, 2, 3), [(1, 2, 3)], [(1, -1), (0, 0)]])
def test_conv_padding_bad(padding):
    with pytest.raises(ValueError, match=r"f: padding must be"):
        P.conv_padding(padding, 2, fn="f")


@pytest.mark.parametrize("k,d,want", [(1, 1, 0), (3, 1, 1), (7, 1, 3), (3, 2, 2), (5, 3, 6)])
def test_same_padding(k, d, want):
    assert P.same_padding(k, d) == want


def test_plans_are_frozen_and_hashable():
    """Plans are static data (nnx keeps them in the graph definition): immutable, hashable,
    equal when built from equal options."""
    a = P.SqueezeExcitePlan.create(64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rd_channels = 3
    assert a == P.SqueezeExcitePlan.create(64) and hash(a) == hash(P.SqueezeExcitePlan.create(64))
    assert a != P.SqueezeExcitePlan.create(64, rd_ratio=0.25)
    for plan in (P.GatherExcitePlan.create(32, extent=4, extra_params=True),
                 P.ContextAwarePyramidPlan.create(16, dilations=[1, 2, 3]),
                 P.SpatialTransformerPlan.create(3, tps_grid_size=[2, 3], transform="tps"),
                 P.MultiHeadSelfAttention2dPlan.create(8, num_heads=2, position="relative",
                                                       input_size=[3, 4]),
                 P.ASPPPlan.create(8, atrous_rates=[1, 2])):
        hash(plan)  # lists given as options are stored as tuples
