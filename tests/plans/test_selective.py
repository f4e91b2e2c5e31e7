"""Plans of SK-Net and ResNeSt split attention: the attention width d and the branches."""

import pytest

from attention_jax import plans as P


@pytest.mark.parametrize("c,kw,d", [
    (64, {}, 32),  # make_divisible(64 / 16, 8) = 8 < L = 32
    (256, {"rd_ratio": 0.25}, 64),
    (256, {"rd_min_channels": 8}, 16),
    (200, {"rd_min_channels": 8}, 16),  # 12.5 -> 16
    (64, {"rd_channels": 5}, 5),  # an explicit width ignores L
])
def test_selective_kernel_width(c, kw, d):
    assert P.SelectiveKernelPlan.create(c, **kw).rd_channels == d


def test_selective_kernel_branches():
    p = P.SelectiveKernelPlan.create(32, num_paths=3, out_channels=16, groups=4, stride=2)
    assert (p.out_channels, p.dilations, p.groups, p.stride) == (16, (1, 2, 3), 4, 2)


@pytest.mark.parametrize("kw,d,padding", [
    ({}, 32, 1),  # max(make_divisible(2 * 64 / 16, 8) = 8, 32)
    ({"radix": 4, "rd_ratio": 0.25, "rd_min_channels": 8}, 64, 1),  # 4 * 64 / 4
    ({"kernel_size": 5, "dilation": 2}, 32, 4),  # dilation * (k - 1) / 2
    ({"radix": 1, "rd_channels": 12, "groups": 4}, 12, 1),
])
def test_split_attention(kw, d, padding):
    p = P.SplitAttentionPlan.create(64, **kw)
    assert (p.rd_channels, p.padding, p.out_channels) == (d, padding, 64)


@pytest.mark.parametrize("make,msg", [
    (lambda: P.SelectiveKernelPlan.create(16, groups=3),
     r"SelectiveKernel: channels must be divisible by groups=3, got 16"),
    (lambda: P.SelectiveKernelPlan.create(16, num_paths=0),
     r"SelectiveKernel: num_paths must be an integer >= 1, got 0"),
    (lambda: P.SelectiveKernelPlan.create(16, out_channels=0),
     r"SelectiveKernel: out_channels must be an integer >= 1, got 0"),
    (lambda: P.SplitAttentionPlan.create(16, radix=3),
     r"SplitAttention: channels must be divisible by groups \* radix=3, got 16"),
    (lambda: P.SplitAttentionPlan.create(16, groups=4, rd_channels=6),
     r"SplitAttention: rd_channels \(attention width\) must be divisible by groups=4, got 6"),
    (lambda: P.SplitAttentionPlan.create(16, kernel_size=4),
     r"SplitAttention: kernel_size must be an odd positive integer, got 4"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
