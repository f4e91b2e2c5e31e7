"""Plans of the channel mechanisms: derived widths and kernels worked out by hand, errors."""

import pytest

from attention_jax import plans as P


@pytest.mark.parametrize("kw,rd", [({}, 8), ({"rd_ratio": 0.25}, 16), ({"rd_channels": 5}, 5),
                                   ({"rd_ratio": 0.25, "rd_divisor": 1}, 16)])
def test_squeeze_excite(kw, rd):
    p = P.SqueezeExcitePlan.create(64, **kw)
    assert (p.channels, p.rd_channels, p.bias, p.add_maxpool) == (64, rd, True, False)
    assert P.SqueezeExcitePlan.create(200).rd_channels == 16  # 12.5 -> 16 (timm)


@pytest.mark.parametrize("c,k", [(16, 3), (64, 3), (200, 5), (256, 5), (1024, 5), (2048, 7)])
def test_eca_kernel(c, k):
    """k = the odd number at or above int((log2(C) + 1) / 2), padding (k - 1) / 2."""
    p = P.EfficientChannelAttentionPlan.create(c)
    assert (p.kernel_size, p.padding) == (k, (k - 1) // 2)
    assert P.EfficientChannelAttentionPlan.create(c, kernel_size=9).padding == 4


def test_gather_excite_convs():
    p = P.GatherExcitePlan.create(32, extent=8, extra_params=True)
    assert p.gather_convs == (P.GatherConv((3, 3), 2, 1),) * 3 and p.rd_channels == 8
    p = P.GatherExcitePlan.create(32, extra_params=True, feat_size=(7, 5), use_mlp=False)
    assert p.gather_convs == (P.GatherConv((7, 5), 1, 0),) and p.rd_channels is None
    assert P.GatherExcitePlan.create(32, extent=2).gather_convs == ()


def test_global_context_and_soca():
    p = P.GlobalContextPlan.create(64, fuse_scale=True)
    assert (p.fuse_add, p.fuse_scale, p.rd_channels) == (True, True, 8)
    assert P.SecondOrderChannelPlan.create(64, iterations=3).iterations == 3


@pytest.mark.parametrize("make,msg", [
    (lambda: P.SqueezeExcitePlan.create(0), r"SqueezeExcite: channels must be an integer >= 1"),
    (lambda: P.SqueezeExcitePlan.create(64, rd_ratio=float("inf")),
     r"SqueezeExcite: rd_ratio must be a positive finite number, got inf"),
    (lambda: P.SqueezeExcitePlan.create(64, fn="MyBlock", rd_channels=0),
     r"MyBlock: rd_channels must be an integer >= 1, got 0"),
    (lambda: P.EfficientChannelAttentionPlan.create(16, kernel_size=4),
     r"EfficientChannelAttention: kernel_size must be an odd positive integer, got 4"),
    (lambda: P.GatherExcitePlan.create(16, extent=3),
     r"GatherExcite: extent must be 0 \(global\) or a power of two >= 2, got 3"),
    (lambda: P.GatherExcitePlan.create(16, extra_params=True),
     r"GatherExcite: feat_size must be the input's \(H, W\)"),
    (lambda: P.GatherExcitePlan.create(16, extra_params=True, feat_size=(2, 0)),
     r"GatherExcite: feat_size must be an integer >= 1, got 0"),
    (lambda: P.GlobalContextPlan.create(16, fuse_add=False),
     r"GlobalContext: fuse_add / fuse_scale must be at least one True"),
    (lambda: P.SecondOrderChannelPlan.create(16, iterations=0),
     r"SecondOrderChannel: iterations must be an integer >= 1, got 0"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("kw,msg", [
    ({"gamma": 0}, r"gamma must be a positive finite number, got 0"),
    ({"beta": float("nan")}, r"beta must be a finite number, got nan"),
])
def test_eca_bad_constants_name_the_module(kw, msg):
    """Were a ZeroDivisionError / a ValueError naming no function."""
    with pytest.raises(ValueError, match=r"EfficientChannelAttention: " + msg):
        P.EfficientChannelAttentionPlan.create(64, **kw)
