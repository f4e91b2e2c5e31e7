"""Plans of the hybrid mechanisms (CBAM, BAM, coordinate attention)."""

import pytest

from attention_jax import plans as P


def test_cbam_holds_its_gates():
    p = P.CBAMPlan.create(64, kernel_size=5, bias=True)
    assert p.channel == P.ChannelGatePlan.create(64, bias=True)
    assert (p.spatial.kernel_size, p.spatial.padding, p.spatial.norm_momentum) == (5, 2, 0.99)
    assert p.channel.rd_channels == 8 and not P.ChannelGatePlan.create(64).bias


def test_bam_and_coordinate_attention():
    p = P.BAMPlan.create(256, dilation=2, combine="official")
    assert (p.rd_channels, p.dilation, p.combine) == (16, 2, "official")
    assert P.CoordinateAttentionPlan.create(320).rd_channels == 24


@pytest.mark.parametrize("make,msg", [
    (lambda: P.CBAMPlan.create(True), r"CBAM: channels must be an integer >= 1, got True"),
    (lambda: P.CBAMPlan.create(32, kernel_size=6),
     r"CBAM: kernel_size must be an odd positive integer, got 6"),
    (lambda: P.CBAMPlan.create(32, rd_channels=0),
     r"CBAM: rd_channels must be an integer >= 1, got 0"),
    (lambda: P.SpatialGatePlan.create(32, kernel_size=6),
     r"SpatialGate: kernel_size must be an odd positive integer, got 6"),
    (lambda: P.CBAMPlan.create(32, act="rleu"), r"CBAM: act must be a callable or one of 'relu'"),
    (lambda: P.CBAMPlan.create(32, gate=None), r"CBAM: gate must be a callable or one of"),
    (lambda: P.BAMPlan.create(32, combine="max"), r"BAM: combine must be one of 'paper'"),
    (lambda: P.BAMPlan.create(32, dilation=0), r"BAM: dilation must be an integer >= 1"),
    (lambda: P.CoordinateAttentionPlan.create(16.0),
     r"CoordinateAttention: channels must be an integer >= 1, got 16.0"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
