"""Plans of the self-attention mechanisms."""

import jax.numpy as jnp
import pytest

from attention_jax import plans as P


def test_widths():
    assert P.NonLocalPlan.create(64).inter_channels == 32
    assert P.NonLocalPlan.create(1).inter_channels == 1  # floored at 1
    assert P.NonLocalPlan.create(64, inter_channels=5).inter_channels == 5
    assert P.NonLocalPlan.create(8, mode="concatenation").has_concat_project
    assert P.PositionAttentionPlan.create(64).qk_channels == 8
    assert P.CrissCrossAttentionPlan.create(4).qk_channels == 1
    p = P.DualAttentionHeadPlan.create(64, out_channels=5)
    assert (p.inter_channels, p.out_channels) == (16, 5)
    assert P.DualAttentionHeadPlan.create(64).out_channels == 64


def test_mhsa_positions():
    p = P.MultiHeadSelfAttention2dPlan.create(16, num_heads=4, position="relative",
                                              input_size=(3, 5))
    assert p.rel_table_shape == (5 * 9, 4) and p.pos_embed_shape == (1, 3, 5, 16)
    p.check_input(jnp.ones((1, 3, 5, 16)))
    with pytest.raises(ValueError, match=r"MultiHeadSelfAttention2d: x must be spatial size "
                       r"\(3, 5\)"):
        p.check_input(jnp.ones((1, 5, 3, 16)))
    P.MultiHeadSelfAttention2dPlan.create(16).check_input(jnp.ones((1, 5, 3, 16)))  # any size


@pytest.mark.parametrize("make,msg", [
    (lambda: P.NonLocalPlan.create(8, mode="gaussian"), r"NonLocal: mode must be one of"),
    (lambda: P.NonLocalPlan.create(-4), r"NonLocal: channels must be an integer >= 1, got -4"),
    (lambda: P.PositionAttentionPlan.create(8, qk_channels=0),
     r"PositionAttention: qk_channels must be an integer >= 1, got 0"),
    (lambda: P.CrissCrossAttentionPlan.create(8, recurrence=0),
     r"CrissCrossAttention: recurrence must be an integer >= 1, got 0"),
    (lambda: P.MultiHeadSelfAttention2dPlan.create(8, num_heads=3),
     r"MultiHeadSelfAttention2d: channels must be divisible by num_heads=3"),
    (lambda: P.MultiHeadSelfAttention2dPlan.create(8, position="absolute", input_size=(0, 2)),
     r"MultiHeadSelfAttention2d: input_size must be \(H, W\) positive ints"),
    (lambda: P.ChannelSelfAttentionPlan.create(2.0),
     r"ChannelSelfAttention: channels must be an integer >= 1, got 2.0"),
    # implementation is checked with the plan, naming the module (it was checked only by
    # attention(), naming attention; found by tests/test_properties.py).
    (lambda: P.NonLocalPlan.create(8, implementation="flash"),
     r"NonLocal: implementation must be one of 'auto', 'xla', 'chunked', 'native'"),
    (lambda: P.PositionAttentionPlan.create(8, implementation=None),
     r"PositionAttention: implementation must be one of"),
    (lambda: P.DualAttentionHeadPlan.create(8, implementation="flash"),
     r"DualAttentionHead: implementation must be one of"),
    (lambda: P.MultiHeadSelfAttention2dPlan.create(8, implementation="flash"),
     r"MultiHeadSelfAttention2d: implementation must be one of"),
])
def test_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
