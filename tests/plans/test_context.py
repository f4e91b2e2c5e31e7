"""Plan of ASPP."""

import pytest

from attention_jax import plans as P


def test_aspp():
    p = P.ASPPPlan.create(16, out_channels=8, atrous_rates=[1, 2])
    assert (p.out_channels, p.atrous_rates, p.num_branches, p.concat_channels) == (
        8, (1, 2), 3, 8 * 4)  # 1x1 + 2 atrous + pooled
    assert P.ASPPPlan.create(16).out_channels == 16


@pytest.mark.parametrize("make,msg", [
    (lambda: P.ASPPPlan.create(8, atrous_rates=()),
     r"ASPP: atrous_rates must be a non-empty tuple"),
    (lambda: P.ASPPPlan.create(8, atrous_rates=(6, 0)), r"ASPP: atrous_rates must be an integer"),
    (lambda: P.ASPPPlan.create(8, out_channels=-1),
     r"ASPP: out_channels must be an integer >= 1, got -1"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
