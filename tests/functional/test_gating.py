import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import functional as F
from tests.gradcheck import check_grads


@pytest.mark.parametrize(
    "name,ref",
    [("sigmoid", torch.sigmoid), ("hard_sigmoid", torch.nn.functional.hardsigmoid),
     ("tanh", torch.tanh)],
)
def test_gates_match_torch(name, ref):
    x = np.linspace(-6, 6, 41, dtype=np.float32)
    np.testing.assert_allclose(F.gate(x, kind=name), ref(torch.from_numpy(x)).numpy(), atol=1e-6)
    np.testing.assert_allclose(F.get_gate(name)(x), F.gate(x, kind=name))


@pytest.mark.parametrize("name,ref", [("relu", torch.relu), ("silu", torch.nn.functional.silu),
                                      ("gelu", torch.nn.functional.gelu),
                                      ("hard_swish", torch.nn.functional.hardswish)])
def test_acts_match_torch(name, ref):
    x = np.linspace(-6, 6, 41, dtype=np.float32)
    np.testing.assert_allclose(F.get_act(name)(x), ref(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_unknown_gate_lists_choices():
    with pytest.raises(ValueError, match=r"get_gate: gate must be a callable or one of 'sigmoid'"):
        F.get_gate("sigmoidd")
    with pytest.raises(ValueError, match=r"gate: kind must be .* got 'nope'"):
        F.gate(jnp.ones(3), kind="nope")


def test_rescale_broadcast_and_errors():
    x = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
    w = jnp.full((2, 1, 1, 4), 0.5, jnp.float32)
    out = F.rescale(x, w)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    with pytest.raises(ValueError, match=r"rescale: weights must be broadcastable to x's shape"):
        F.rescale(x, jnp.ones((2, 1, 1, 5)))
    with pytest.raises(ValueError, match=r"rescale: weights must be broadcastable"):
        F.rescale(x, jnp.ones((2, 2, 3, 3, 4)))


def test_branch_softmax(x64):
    logits = jnp.array([[[1e4, 0.0], [-1e4, 3.0]]], jnp.bfloat16)  # (1, M=2, C=2)
    w = F.branch_softmax(logits, axis=1)
    assert w.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(w)))
    np.testing.assert_allclose(np.asarray(w, np.float32).sum(1), 1.0, atol=1e-2)
    z = jnp.arange(6.0, dtype=jnp.float64).reshape(1, 3, 2) / 3
    check_grads(lambda z: F.branch_softmax(z, axis=1), (z,), order=2)
    with pytest.raises(ValueError, match=r"branch_softmax: axis must be in \[-3, 3\), got 3"):
        F.branch_softmax(logits.astype(jnp.float32)[..., None][..., 0], axis=3)


@pytest.mark.parametrize("c", [1, 2, 16, 64, 128, 256, 512, 1024, 2048])
def test_eca_kernel_size_formula(c):
    t = int(abs((math.log2(c) + 1) / 2))
    k = F.eca_kernel_size(c)
    assert k % 2 == 1 and k == (t if t % 2 else t + 1)
    assert F.eca_kernel_size(256) == 5 and F.eca_kernel_size(64) == 3


def _timm_make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """An independent copy of timm's ``make_divisible`` (timm/layers/helpers.py)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


# (value, divisor, round_limit) -> width, worked out by hand from timm's rule
# max(divisor, floor((v + divisor / 2) / divisor) * divisor), plus one divisor when that lost
# more than 1 - round_limit of v. Rounding down instead of to the nearest gives the second
# number in some comments.
MAKE_DIVISIBLE = [
    ((200 / 16, 8, 0.0), 16),  # 12.5 -> 16 (down: 8): timm's SE width for C=200
    ((208 / 16, 8, 0.0), 16),  # 13 -> 16 (down: 8)
    ((320 / 16, 8, 0.0), 24),  # 20 -> 24 (down: 16)
    ((256 / 16, 8, 0.0), 16),  # exact
    ((64 / 16, 8, 0.0), 8),  # 4 -> 8: the floor min_value = divisor
    ((1.0, 8, 0.0), 8),
    ((37, 8, 0.9), 40),  # 37 -> 40 (down: 32)
    ((11.9, 8, 0.0), 8),  # 11.9 + 4 = 15.9 -> 8, just below the midpoint
    ((12.0, 8, 0.0), 16),  # the midpoint 12 + 4 = 16 rounds up
    ((27, 4, 0.9), 28),  # (27 + 2) // 4 * 4 = 28
    # The 0.9 guard: 11 rounds to 8 (nearest), which loses 27% > 10%, so one divisor more.
    ((11, 8, 0.9), 16),
    ((11, 8, 0.0), 8),  # without the guard (round_limit=0, as the reduced widths use)
    ((19, 16, 0.9), 32),  # nearest is 16 < 0.9 * 19 = 17.1 -> 32
    ((18, 16, 0.9), 32),  # nearest is 16 < 0.9 * 18 = 16.2 -> 32
    ((17, 16, 0.9), 16),  # nearest is 16 >= 0.9 * 17 = 15.3: kept
]


@pytest.mark.parametrize("args,width", MAKE_DIVISIBLE, ids=[str(a) for a, _ in MAKE_DIVISIBLE])
def test_make_divisible_table(args, width):
    value, divisor, limit = args
    assert _timm_make_divisible(value, divisor, round_limit=limit) == width  # the table is timm's
    assert F.make_divisible(value, divisor=divisor, round_limit=limit) == width


# C -> width of reduced_channels(C, rd_ratio=1/16, rd_divisor=8), timm's SE width
# make_divisible(C / 16, 8, round_limit=0.).
REDUCED = {16: 8, 64: 8, 128: 8, 192: 16, 200: 16, 208: 16, 256: 16, 320: 24, 512: 32,
           1000: 64, 2048: 128}


@pytest.mark.parametrize("c", REDUCED)
def test_reduced_channels_table(c):
    assert F.reduced_channels("f", c, rd_ratio=1 / 16, rd_channels=None, rd_divisor=8) == REDUCED[c]
    assert _timm_make_divisible(c / 16, 8, round_limit=0.0) == REDUCED[c]


def test_make_divisible_and_reduced_channels():
    assert F.reduced_channels("f", 256, rd_ratio=1 / 16, rd_channels=7, rd_divisor=8) == 7
    assert F.reduced_channels("f", 48, rd_ratio=1 / 16, rd_channels=None, rd_divisor=1) == 3
    assert F.reduced_channels("f", 200, rd_ratio=0.25, rd_channels=None, rd_divisor=1) == 50
    assert F.reduced_channels("f", 64, rd_ratio=np.float32(0.25), rd_channels=None,
                              rd_divisor=8) == 16
    with pytest.raises(ValueError, match=r"f: rd_ratio must be large enough"):
        F.reduced_channels("f", 8, rd_ratio=1 / 16, rd_channels=None, rd_divisor=1)
    with pytest.raises(ValueError, match=r"f: rd_channels must be an integer >= 1, got 0"):
        F.reduced_channels("f", 8, rd_ratio=1 / 16, rd_channels=0, rd_divisor=8)


@pytest.mark.parametrize("ratio", [math.inf, -math.inf, math.nan, -0.25, 0.0, True, "1/16"])
def test_reduced_channels_bad_ratio(ratio):
    """A ValueError naming the caller, not int(inf)'s OverflowError."""
    with pytest.raises(ValueError, match=r"f: rd_ratio must be a positive finite number"):
        F.reduced_channels("f", 64, rd_ratio=ratio, rd_channels=None, rd_divisor=8)


def test_gate_grads_under_jit(x64):
    for name in ("sigmoid", "hard_sigmoid", "tanh"):
        f = jax.jit(lambda z, n=name: F.gate(z, kind=n))
        check_grads(f, (jnp.array([-2.2, 0.3, 1.7], jnp.float64),), order=1)


# --- Found by tests/test_properties.py --------------------------------------------------------

def test_hard_sigmoid_keeps_numpy_bf16():
    """A NumPy bf16 array stays bf16 (NumPy promoted ``x + 3.0`` to float32)."""
    x = np.asarray(jnp.linspace(-4, 4, 9, dtype=jnp.bfloat16))
    assert F.gate(x, kind="hard_sigmoid").dtype == jnp.bfloat16


def test_branch_softmax_axis_must_be_an_int():
    with pytest.raises(ValueError, match=r"branch_softmax: axis must be in \[-3, 3\), got 1.0"):
        F.branch_softmax(jnp.ones((2, 3, 4)), axis=1.0)  # was TypeError


@pytest.mark.parametrize("kw,msg", [
    ({"gamma": 0}, r"gamma must be a positive finite number, got 0"),  # was ZeroDivisionError
    ({"gamma": float("nan")}, r"gamma must be a positive finite number, got nan"),
    ({"gamma": None}, r"gamma must be a positive finite number, got None"),  # was TypeError
    ({"beta": float("inf")}, r"beta must be a finite number, got inf"),  # was OverflowError
    ({"gamma": 5e-324}, r"gamma must be large enough that \(log2\(channels\) \+ beta\) / gamma "
                        r"is finite"),
])
def test_eca_kernel_size_bad_constants(kw, msg):
    with pytest.raises(ValueError, match=r"eca_kernel_size: " + msg):
        F.eca_kernel_size(64, **kw)


@pytest.mark.parametrize("args,kw,msg", [
    ((float("inf"),), {}, r"value must be a finite number, got inf"),  # was OverflowError
    ((float("nan"),), {}, r"value must be a finite number, got nan"),
    ((None,), {}, r"value must be a finite number, got None"),  # was TypeError
    ((12.5,), {"divisor": 200, "min_value": -1}, r"min_value must be an integer >= 1, got -1"),
    ((12.5,), {"round_limit": float("nan")}, r"round_limit must be a finite number, got nan"),
])
def test_make_divisible_bad_values(args, kw, msg):
    with pytest.raises(ValueError, match=r"make_divisible: " + msg):
        F.make_divisible(*args, **kw)


def test_reduced_channels_overflowing_ratio_names_the_caller():
    with pytest.raises(ValueError, match=r"SE: rd_ratio must be small enough that channels \* "
                                         r"rd_ratio is finite"):
        F.reduced_channels("SE", 8, rd_ratio=1e308, rd_channels=None, rd_divisor=8)
