"""Plans of PFANet's mechanisms."""

import pytest

from attention_jax import plans as P


def test_context_aware_pyramid():
    p = P.ContextAwarePyramidPlan.create(32, out_channels=64, dilations=[1, 2, 3])
    assert (p.out_channels, p.branch_channels, p.dilations, p.rd_channels) == (64, 16,
                                                                               (1, 2, 3), 8)
    assert P.ContextAwarePyramidPlan.create(16, rd_ratio=0.25, rd_divisor=1).rd_channels == 4


def test_pyramid_spatial_attention():
    p = P.PyramidSpatialAttentionPlan.create(16, kernel_size=5)
    assert (p.mid_channels, p.row_kernel, p.row_padding, p.col_kernel, p.col_padding) == (
        8, (1, 5), (0, 2), (5, 1), (2, 0))
    assert P.PyramidSpatialAttentionPlan.create(1).mid_channels == 1  # C // 2 floored at 1


def test_pyramid_feature_attention():
    p = P.PyramidFeatureAttentionPlan.create(8, 12, features=4, mid_channels=6,
                                             dilations=(3, 5))
    assert p.pyramid_channels == 12 and p.cpfe.out_channels == 12 and p.cpfe.channels == 12
    assert p.sa.channels == 6 and p.sa.mid_channels == 3


@pytest.mark.parametrize("make,msg", [
    (lambda: P.ContextAwarePyramidPlan.create(18),
     r"ContextAwarePyramid: out_channels must be divisible by 1 \+ len\(dilations\)=4, got 18"),
    (lambda: P.ContextAwarePyramidPlan.create(16, dilations=3),
     r"ContextAwarePyramid: dilations must be a sequence of integers >= 1"),
    (lambda: P.PyramidSpatialAttentionPlan.create(16, kernel_size=8),
     r"PyramidSpatialAttention: kernel_size must be an odd positive integer, got 8"),
    (lambda: P.PyramidSpatialAttentionPlan.create(16, mid_channels=0),
     r"PyramidSpatialAttention: mid_channels must be an integer >= 1, got 0"),
    (lambda: P.PyramidFeatureAttentionPlan.create(8, 0),
     r"PyramidFeatureAttention: high_channels must be an integer >= 1, got 0"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
