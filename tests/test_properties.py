"""Property test over every registered mechanism and every public array function (issue #16).

The property: a call either returns a finite output of the documented shape and dtype, or raises
``ValueError`` whose message starts with the function's (or module's) name. Any other exception
type, a non-finite output, a wrong shape or dtype, or a hang fails.

What is drawn:

* Mechanisms: every name in ``attention_jax.list_attention()``, built with ``create_attention``
  for ``api="linen"`` (``init`` then ``apply``, inference or ``train=True``, whose new batch
  statistics must be finite too) and ``api="nnx"`` (construct, ``train()``/``eval()``, call),
  both on every example; they must accept or refuse it alike. Channels 1, 3, 8, 24 (and 0,
  -4, 16.0, True, 8.5), batch 0/1/2, spatial sizes with 0 and 1, input dtypes float32, bfloat16
  and float16, the ``dtype`` / ``param_dtype`` / ``precision`` options, and each other option of
  the mechanism from a table of valid values and of invalid ones (negative, zero, float where an
  int is expected, inf, nan, bools, unknown names).
  An example is either all-valid options or exactly one invalid option/input, so that every
  invalid value is seen on its own.
* Functions: every callable in ``attention_jax.functional.__all__`` that takes arrays (the
  pooling descriptors, gates and softmaxes, the sampling grids and ``grid_sample``, every score,
  ``attention_weights``, ``attend``, ``attention`` with masks, fully-masked rows, ``-inf`` bias
  and all implementations, ...) plus the integer/shape helpers; eagerly or under ``jax.jit``.
  ``test_every_public_function_is_covered`` keeps the table complete: the only functions left
  out are the mechanisms' forwards that take layers, which the module property drives.

What "finite input" means (the domain in which a finite output is promised):

* Values are finite. Feature maps (and q/k/v, grids' images, ...) have ``|x| <= 1e4``, the
  magnitude the README promises for bf16/fp16 (float16's max is 65504). Inputs are drawn as
  normal noise, zeros, constant maps, ``+-1e4`` everywhere, tiny values and mixtures. With
  ``gate="identity"`` a mechanism multiplies x by an unbounded function of x (its output grows
  like ``|x|^2``), so there ``|x| <= sqrt(max) / 16`` (16 in float16; 1e4 otherwise).
* Softmax/gate inputs (``gate``, ``branch_softmax``, ``radix_softmax``, ``attention_weights``
  scores and bias) take any finite value up to half the dtype's max (so that ``scores + bias``
  is representable in float32); a bias may also hold ``-inf`` (a masked entry).
* Products of inputs (the score functions, ``rescale``) are drawn with magnitudes whose exact
  result fits the output dtype (``|q|, |k| <= sqrt(max / (2 D))``, capped at 1e4).
* Sampling grids may hold huge values, nan and +-inf (documented: such a point samples 0).

Budget: the ``ci`` profile (default) is derandomized with no example database, so CI sees the
same examples every run, and sized to run in about a minute on two cores: shapes come from small
sets so JAX's per-primitive compile cache hits across examples and between the linen and nnx
twins. ``ATTENTION_JAX_PROPERTY_PROFILE=deep`` runs many more, randomized examples (use it to
hunt; a failure prints the seed to reproduce). Each example runs under a hard guard: a
``SIGALRM`` that raises after ``GUARD_S`` seconds and a ``faulthandler`` timer that kills the
process (with every thread's traceback) if even that cannot interrupt it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import inspect
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attention_jax as aj
from attention_jax import functional as F

# ----------------------------------------------------------------------------------------------
# Budget, profiles, the hard guard
# ----------------------------------------------------------------------------------------------

_COMMON = dict(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
# (module examples per mechanism, function examples per function, settings)
_PROFILES: dict[str, tuple[int, int, dict[str, Any]]] = {
    # Reproducible: the same examples every run, no database read or written.
    # The deadline is far above an example's cost (compiles included, ~0.1-10 s on a loaded
    # machine): it flags a runaway, and the hard guard below stops a hang.
    "ci": (4, 12, dict(derandomize=True, database=None,
                       deadline=timedelta(seconds=90), **_COMMON)),
    # Hunting: many random examples.
    "deep": (25, 300, dict(derandomize=False, database=None,
                           deadline=timedelta(seconds=90), **_COMMON)),
}
_PROFILE = os.environ.get("ATTENTION_JAX_PROPERTY_PROFILE", "ci")
if _PROFILE not in _PROFILES:
    raise ValueError(f"ATTENTION_JAX_PROPERTY_PROFILE must be one of {sorted(_PROFILES)}, "
                     f"got {_PROFILE!r}")
MODULE_EXAMPLES, FUNCTION_EXAMPLES, _SETTINGS = _PROFILES[_PROFILE]
MODULE_SETTINGS = settings(max_examples=MODULE_EXAMPLES, **_SETTINGS)
FUNCTION_SETTINGS = settings(max_examples=FUNCTION_EXAMPLES, **_SETTINGS)

GUARD_S = 180
"""Hard limit of one example (compiles included): past it the example fails as a hang."""


class ExampleHang(Exception):
    """An example ran past ``GUARD_S`` (not a ValueError: it fails the property)."""


@contextlib.contextmanager
def hard_guard(what: str, seconds: int = GUARD_S):
    """Fail ``what`` if it runs longer than ``seconds``; kill the process if even that hangs."""
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        def _raise(signum, frame):
            raise ExampleHang(f"{what} ran longer than {seconds} s")
        previous = signal.signal(signal.SIGALRM, _raise)
        signal.alarm(seconds)
    # Stuck in C++ (an XLA compile or a native kernel), the alarm cannot interrupt: dump every
    # thread and exit, so CI reports a crashed worker instead of waiting forever.
    faulthandler.dump_traceback_later(2 * seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if in_main:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------
# The property
# ----------------------------------------------------------------------------------------------

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
HUGE = 1e4
"""Largest feature magnitude in the finite-input domain (the README's bf16/fp16 promise)."""


def _finite(a: Any) -> bool:
    a = np.asarray(a)
    if a.dtype.kind not in "fc" and a.dtype != jnp.bfloat16:
        return True
    return bool(np.all(np.isfinite(np.asarray(a, np.float64))))


@dataclass
class Expect:
    """What a successful call must return: ``shape`` and ``dtype``, finite.

    ``refuse``: the arguments are invalid, only a ValueError passes. By default it is set when a
    ``dtype`` is given without a ``shape`` (the drawn arguments have no valid output shape);
    ``Expect(None)`` checks nothing about the output.
    """

    shape: tuple[int, ...] | None
    dtype: Any = None
    finite: bool = True
    refuse: bool | None = None

    def __post_init__(self):
        if self.refuse is None:
            self.refuse = self.shape is None and self.dtype is not None


def check_property(names: tuple[str, ...], call: Callable[[], Any], expect: Expect) -> Any:
    """Run ``call``; a ValueError must start with one of ``names``; else check the output.

    Returns the output (None when a ValueError was raised). Any other exception propagates, so
    hypothesis reports it (with the drawn example) as a failure.
    """
    try:
        out = call()
    except ValueError as e:
        msg = str(e)
        assert msg.startswith(tuple(f"{n}:" for n in names)), (
            f"a ValueError must name the function ({' or '.join(names)}); got: {msg!r}")
        return None
    check_output(names[0], out, expect)
    return out


def check_output(name: str, out: Any, expect: Expect) -> None:
    assert not expect.refuse, f"{name}: accepted invalid arguments (no ValueError)"
    if expect.shape is not None:
        assert tuple(np.shape(out)) == tuple(expect.shape), (
            f"{name}: output shape {tuple(np.shape(out))}, expected {tuple(expect.shape)}")
    if expect.dtype is not None:
        assert jnp.dtype(out.dtype) == jnp.dtype(expect.dtype), (
            f"{name}: output dtype {out.dtype}, expected {jnp.dtype(expect.dtype)}")
    if expect.finite:
        assert _finite(out), f"{name}: non-finite output for a finite input"


# ----------------------------------------------------------------------------------------------
# Input values
# ----------------------------------------------------------------------------------------------

VALUE_KINDS = ("normal", "zeros", "constant", "huge", "tiny", "mixed", "uniform")


@st.composite
def values(draw, shape: tuple[int, ...], dtype: Any, bound: float = HUGE,
           kinds: tuple[str, ...] = VALUE_KINDS) -> np.ndarray:
    """A finite array of ``shape`` and ``dtype`` with ``|x| <= bound`` (a drawn kind + seed)."""
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "normal":
        a = rng.standard_normal(shape) * min(1.0, bound)
    elif kind == "zeros":
        a = np.zeros(shape)
    elif kind == "constant":
        a = np.full(shape, draw(st.sampled_from([1.0, -0.5, bound])))
    elif kind == "huge":
        a = rng.choice([-1.0, 1.0], size=shape) * bound
    elif kind == "tiny":
        a = rng.standard_normal(shape) * float(jnp.finfo(dtype).tiny) * 4
    elif kind == "uniform":
        a = rng.uniform(-bound, bound, size=shape)
    else:  # mixed: noise with some entries at +-bound
        a = rng.standard_normal(shape)
        a = np.where(rng.random(shape) < 0.2, np.sign(a) * bound, a)
    # Cast, then clamp what rounding pushed past the dtype's largest finite value.
    big = float(jnp.finfo(dtype).max)
    return np.asarray(jnp.asarray(np.clip(a, -big, big), dtype))


def softmax_bound(dtype: Any) -> float:
    """Half the dtype's max: two such values still add up to a finite float32."""
    return float(jnp.finfo(dtype).max) / 2


def product_bound(dtype: Any, d: int) -> float:
    """|q|, |k| such that a D-term dot product fits the dtype: sqrt(max / (2 D)), <= 1e4."""
    return min(HUGE, math.sqrt(float(jnp.finfo(dtype).max) / (2 * max(d, 1))))


# ----------------------------------------------------------------------------------------------
# Mechanisms: option tables
# ----------------------------------------------------------------------------------------------

NAMES = aj.list_attention()
INF, NAN = float("inf"), float("nan")

CHANNELS = (8, 1, 3, 24)
BAD_CHANNELS = (0, -4, 16.0, True, 8.5)
BATCHES = (2, 1, 0)
SPATIAL = ((5, 5), (1, 1), (3, 2), (0, 3))

_BOOL = ([True, False], ["yes", None, 2])
_POS_INT_OR_NONE = ([None, 1, 4], [0, -1, 4.0, True, INF])
# option -> (valid values, invalid values); per-mechanism rows below override these.
OPTIONS: dict[str, tuple[list[Any], list[Any]]] = {
    "rd_ratio": ([1.0 / 16, 0.25, 1.0, 3], [0, -0.25, INF, NAN, True, "1/16", None]),
    "rd_channels": _POS_INT_OR_NONE,
    "rd_divisor": ([8, 1, 3], [0, -8, 8.0, True, None]),
    "act": (["relu", "gelu", "hard_swish", "identity", jnp.tanh], ["bogus", None, 0]),
    "gate": (["sigmoid", "hard_sigmoid", "tanh", "identity"], ["bogus", None, 1.0]),
    "out_channels": ([None, 1, 4, 6], [0, -1, 4.0, True]),
    "kernel_size": ([1, 3, 5], [0, 2, -3, 3.0, True, INF]),
    "stride": ([1, 2, 3], [0, -1, 2.0, True]),
    "dilation": ([1, 2, 4], [0, -2, 1.5, True]),
    "groups": ([1, 2], [0, -1, 2.0, True]),
    "radix": ([1, 2, 3], [0, -2, 2.0, True]),
    "rd_min_channels": ([1, 8, 32], [0, -1, 32.0, True]),
    "num_paths": ([1, 2, 3], [0, -1, 2.0, True]),
    "num_heads": ([1, 2, 8], [0, -1, 2.0, True]),
    "recurrence": ([1, 2, 3], [0, -1, 2.0, True]),
    "iterations": ([1, 2, 5], [0, -1, 5.0, True]),
    "qk_channels": _POS_INT_OR_NONE,
    "inter_channels": _POS_INT_OR_NONE,
    "extent": ([0, 2, 4, 8], [1, 3, -2, 2.0, True]),
    "gamma": ([2.0, 1.0, 3], [0, -2, INF, NAN, True, None]),
    "beta": ([1.0, 0.0, -1.0], [INF, NAN, None]),
    "eps": ([1e-5, 1e-3, 1], [0, -1e-5, NAN, INF, True]),
    "dilations": ([(3, 5, 7), (1,), (1, 2)], [(), (0,), (-1,), (2.0,), 3, "357"]),
    "atrous_rates": ([(6, 12, 18), (1,), (1, 2)], [(), (0,), (-1,), (1.5,), 6]),
    "combine": (["paper", "official"], ["bogus", None]),
    "padding_mode": (["zeros", "border", "reflection"], ["bogus"]),
    "transform": (list(F.TRANSFORMS), ["bogus", None]),
    "out_size": ([None, (1, 1), (3, 2)], [(0, 3), (-1, 2), (2.0, 2), 3, (2,)]),
    "tps_grid_size": ([(3, 3), (2, 2), (2, 4)], [(1, 3), (0, 0), (3,), (3.0, 3), 3]),
    "features": ([(8, 16), (1, 1), (4, 2)], [(0, 4), (4,), (-1, 2), (4.0, 2)]),
    "hidden": ([32, 1, 7], [0, -1, 32.0, True]),
    "pool_size": ([(4, 4), None, (1, 1), (2, 3)], [(0, 4), (4,), (-1, 1), (2.0, 2)]),
    "position": (["none", "absolute", "relative"], ["bogus", None]),
    "implementation": (["auto", "xla", "chunked"], ["bogus", None]),
    "dtype": ([None, jnp.float32, jnp.bfloat16, jnp.float16], []),
    "param_dtype": ([jnp.float32, jnp.bfloat16], []),
    "precision": ([None, jax.lax.Precision.HIGHEST, "highest"], []),
}
for _flag in ("add_maxpool", "bias", "fuse_add", "fuse_scale", "attn_bias", "extra_params",
              "use_mlp", "use_scale", "sub_sample", "use_bn", "channel_attention",
              "split_input", "qkv_bias", "align_corners"):
    OPTIONS[_flag] = _BOOL
# Options whose meaning depends on the mechanism.
PER_NAME: dict[str, dict[str, tuple[list[Any], list[Any]]]] = {
    "eca": {"kernel_size": ([None, 1, 3, 5], [0, 2, -3, 3.0, True, INF])},
    "nl": {"mode": (list(F.NON_LOCAL_MODES), ["bogus", None])},
    "stn": {"mode": (["bilinear", "nearest", "bicubic"], ["bogus", None])},
    # feat_size / input_size are drawn relative to the input (see _module_options).
    "ge": {"feat_size": ([None, "input"], [0, -1, (0, 1), (2.0, 2), (1, 2, 3)])},
    "mhsa2d": {"input_size": ([None, "input"], [(0, 1), (-1, 2), (2.0, 2), 5])},
}
# Values no mechanism may see (the tables above) are checked to name real options below.


def _option_table(name: str) -> dict[str, tuple[list[Any], list[Any]]]:
    cls = aj.get_attention_class(name, api="linen")
    fields = [f for f in cls.__dataclass_fields__ if f not in ("parent", "name", "channels")]
    table = {}
    for f in fields:
        row = PER_NAME.get(name, {}).get(f) or OPTIONS.get(f)
        if row is None:
            raise KeyError(f"no option values for {name}.{f}: add a row to OPTIONS/PER_NAME")
        table[f] = row
    return table


OPTION_TABLES = {name: _option_table(name) for name in NAMES}


def _resolve(value: Any, spatial: tuple[int, int]) -> Any:
    return spatial if value == "input" else value


@st.composite
def module_case(draw, name: str) -> dict[str, Any]:
    """One example for a mechanism: api, channels, options, input shape/dtype/values."""
    table = OPTION_TABLES[name]
    spatial = draw(st.sampled_from(SPATIAL))
    case = {
        "train": draw(st.booleans()),
        "channels": draw(st.sampled_from(CHANNELS)),
        "batch": draw(st.sampled_from(BATCHES)),
        "spatial": spatial,
        "dtype": draw(st.sampled_from(DTYPES)),
        # (N, H, W, C), one image (H, W, C), or an extra leading dim (2, N, H, W, C)
        "x_rank": draw(st.sampled_from([4, 4, 3, 5])),
        "x_channels_delta": 0,
        "x_integer": False,
        "seed": draw(st.integers(0, 3)),
    }
    # Valid options: each one left at its default or drawn from its valid values.
    opts = {}
    for opt in draw(st.lists(st.sampled_from(sorted(table)), max_size=len(table), unique=True)):
        valid, _ = table[opt]
        opts[opt] = _resolve(draw(st.sampled_from(valid)), spatial)
    # At most one invalid thing: an option, the channels, or the input.
    bad_options = [o for o in sorted(table) if table[o][1]]
    what = draw(st.sampled_from(["none", "none", "option", "channels", "input"]))
    if what == "option" and bad_options:
        opt = draw(st.sampled_from(bad_options))
        opts[opt] = draw(st.sampled_from(table[opt][1]))
        case["invalid"] = opt
    elif what == "channels":
        case["channels"] = draw(st.sampled_from(BAD_CHANNELS))
        case["invalid"] = "channels"
    elif what == "input":
        kind = draw(st.sampled_from(["x_rank", "x_channels_delta", "x_integer"]))
        case[kind] = {"x_rank": 2, "x_channels_delta": 1, "x_integer": True}[kind]
        case["invalid"] = kind
    case["options"] = opts
    c = case["channels"]
    cx = (int(c) if isinstance(c, (int, float)) and c >= 1 and float(c) == int(c) else 2)
    cx += case["x_channels_delta"]
    shape = _with_leading((case["batch"], *spatial, cx), case["x_rank"])
    bound = HUGE
    if opts.get("gate") == "identity":  # an unbounded gate: the output grows like |x|^2
        bound = min(HUGE, math.sqrt(float(jnp.finfo(case["dtype"]).max)) / 16)
    case["x"] = draw(values(shape, case["dtype"], bound))
    if case["x_integer"]:
        case["x"] = case["x"].astype(np.int32)
    return case


def _with_leading(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """A rank-4 (N, H, W, C) shape as the drawn input rank has it: 5 adds a leading 2, 3 drops
    N (one image), 2 drops N and H (invalid: a feature map is at least (H, W, C))."""
    return {5: (2, *shape), 4: shape, 3: shape[1:], 2: shape[2:]}[rank]


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def expected_module_shape(name: str, case: dict[str, Any]) -> tuple[int, ...] | None:
    """(N, H', W', C') from the documented rules: out_channels, stride, out_size (None where
    the options are invalid: then only a ValueError can pass)."""
    opts, (h, w) = case["options"], case["spatial"]
    c = opts.get("out_channels") or case["channels"]
    if name in ("sk", "splat"):
        s = opts.get("stride", 1)
        if not _is_size(s):
            return None
        h, w = -(-h // s), -(-w // s)
    if name == "stn" and opts.get("out_size") is not None:
        size = opts["out_size"]
        if not (isinstance(size, tuple) and len(size) == 2 and all(map(_is_size, size))):
            return None
        h, w = size
    if not _is_size(c):
        return None
    return _with_leading((case["batch"], h, w, c), case["x_rank"])


def run_module(name: str, case: dict[str, Any], api: str) -> Any:
    x = jnp.asarray(case["x"])
    cls_name = aj.get_attention_class(name).__name__
    key = jax.random.key(case["seed"])
    if api == "linen":
        m = aj.create_attention(name, case["channels"], **case["options"])
        variables = m.init(key, x)
        if case["train"] and "batch_stats" in variables:
            y, updates = m.apply(variables, x, train=True, mutable=["batch_stats"])
            assert all(_finite(a) for a in jax.tree_util.tree_leaves(updates)), (
                f"{cls_name}: non-finite batch statistics after a train step")
            return y
        return m.apply(variables, x, train=case["train"])
    n = aj.create_attention(name, case["channels"], api="nnx", rngs=nnx.Rngs(case["seed"]),
                            **case["options"])
    n.train() if case["train"] else n.eval()
    y = n(x)
    if case["train"]:
        stats = nnx.state(n, nnx.BatchStat)
        assert all(_finite(a) for a in jax.tree_util.tree_leaves(stats)), (
            f"{cls_name}: non-finite batch statistics after a train step")
    return y


@pytest.mark.parametrize("name", NAMES)
@MODULE_SETTINGS
@given(data=st.data())
def test_mechanism_property(name, data):
    """Every mechanism: a finite (N, H', W', C') output in x's dtype, or a ValueError naming the
    module (or ``create_attention``); linen and nnx (run on the same example, which costs
    little more: the second reuses the first's compiled operations) accept and refuse alike."""
    case = data.draw(module_case(name), label="case")
    cls_name = aj.get_attention_class(name).__name__
    expect = Expect(expected_module_shape(name, case), case["x"].dtype)
    outcomes = {}
    for api in ("linen", "nnx"):
        with hard_guard(f"{name} ({api})"):
            outcomes[api] = check_property((cls_name, "create_attention"),
                                           partial(run_module, name, case, api), expect)
    accepted = {api: out is not None for api, out in outcomes.items()}
    assert accepted["linen"] == accepted["nnx"], f"{cls_name}: linen and nnx disagree: {accepted}"


def _every_invalid(name: str) -> list[tuple[str, Any]]:
    """(what, value) for every invalid option value of ``name``, and every bad channels."""
    table = OPTION_TABLES[name]
    cases = [("channels", c) for c in BAD_CHANNELS]
    cases += [(opt, v) for opt in sorted(table) for v in table[opt][1]]
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_mechanism_every_invalid_option(name):
    """Each invalid value of the tables, on its own, with defaults elsewhere, in both APIs: a
    ValueError naming the module, or (when the value is accepted, e.g. a truthy flag) a finite
    output of the right shape; linen and nnx alike. Deterministic and cheap (most values are
    refused before anything compiles; the rest share one input shape), so CI sees every value
    that the sampled property above may miss."""
    cls_name = aj.get_attention_class(name).__name__
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
    for what, value in _every_invalid(name):
        case = {"channels": value if what == "channels" else 8,
                "options": {} if what == "channels" else {what: value},
                "batch": 2, "spatial": (5, 5), "train": False, "seed": 0, "x": x,
                "x_rank": 4}
        if what == "channels":
            case["x"] = x[..., :1] if value is True else x
        expect = Expect(expected_module_shape(name, case), np.float32)
        accepted = {}
        for api in ("linen", "nnx"):
            with hard_guard(f"{name} ({api}) {what}={value!r}"):
                out = check_property((cls_name, "create_attention"),
                                     partial(run_module, name, case, api), expect)
            accepted[api] = out is not None
        assert accepted["linen"] == accepted["nnx"], (
            f"{cls_name}({what}={value!r}): linen and nnx disagree: {accepted}")


def test_option_tables_cover_every_option():
    """Each mechanism's every option has valid values drawn (a new option must be added)."""
    for name in NAMES:
        nnx_cls = aj.get_attention_class(name, api="nnx")
        params = set(inspect.signature(nnx_cls.__init__).parameters) - {"self", "channels",
                                                                           "rngs"}
        assert params == set(OPTION_TABLES[name]), name


# ----------------------------------------------------------------------------------------------
# Functions
# ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One drawn call: ``fn(*arrays, **array_kwargs, **static)``, and what it must return."""

    arrays: tuple[Any, ...]
    static: dict[str, Any] = field(default_factory=dict)
    array_kwargs: dict[str, Any] = field(default_factory=dict)
    expect: Expect = field(default_factory=lambda: Expect(None))
    names: tuple[str, ...] = ()
    post: Callable[[Any], Any] | None = None  # picks the array to check from the output


def _nhwc(draw, *, channels=(3, 1, 0), spatial=SPATIAL, batches=BATCHES, bound=HUGE,
          dtype=None):
    dtype = dtype or draw(st.sampled_from(DTYPES))
    shape = (draw(st.sampled_from(batches)), *draw(st.sampled_from(spatial)),
             draw(st.sampled_from(channels)))
    return draw(values(shape, dtype, bound)), dtype


def _pool_case(kind: str):
    @st.composite
    def case(draw):
        x, dtype = _nhwc(draw)
        n, h, w, c = x.shape
        keepdims = draw(st.sampled_from([None, True, False]))
        static = {} if keepdims is None else {"keepdims": keepdims}
        if kind == "global":
            keep = bool(keepdims) if keepdims is not None else False
            shape = (n, 1, 1, c) if keep else (n, c)
        else:
            keep = True if keepdims is None else bool(keepdims)
            shape = (n, h, w, 1) if keep else (n, h, w)
        return Call((x,), static, expect=Expect(shape, dtype))
    return case


@st.composite
def _two_descriptor_case(draw):
    x, dtype = _nhwc(draw)
    n, h, w, _ = x.shape
    return Call((x,), expect=Expect((n, h, w, 2), dtype))


def _axis_pool_case(axis: int):
    @st.composite
    def case(draw):
        x, dtype = _nhwc(draw)
        shape = list(x.shape)
        shape[axis] = 1
        return Call((x,), expect=Expect(tuple(shape), dtype))
    return case


@st.composite
def _avg_pool2d_case(draw):
    x, dtype = _nhwc(draw)
    n, h, w, c = x.shape
    k = draw(st.sampled_from([1, 2, 3, 0, -1, 2.0, True]))
    s = draw(st.sampled_from([None, 1, 2, 0, 1.5]))
    p = draw(st.sampled_from([0, 1, -1, 5]))
    cip = draw(st.sampled_from([True, False]))
    static = {"kernel_size": k, "stride": s, "padding": p, "count_include_pad": cip}
    shape = None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (k, p)) and k > 0:
        stride = k if s is None else s
        if isinstance(stride, int) and stride > 0:
            shape = (n, (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1, c)
    return Call((x,), static, expect=Expect(shape, dtype))


@st.composite
def _adaptive_case(draw):
    x, dtype = _nhwc(draw)
    n, _, _, c = x.shape
    size = draw(st.sampled_from([1, 2, (2, 3), (1, 5), 0, (0, 1), (2,), 2.0, (2.5, 1), -1]))
    pair = (size, size) if isinstance(size, int) else size
    shape = (n, *pair, c) if isinstance(pair, tuple) and len(pair) == 2 else None
    return Call((x,), {"output_size": size}, expect=Expect(shape, dtype))


@st.composite
def _covariance_case(draw):
    x, dtype = _nhwc(draw)
    n, _, _, c = x.shape
    return Call((x,), expect=Expect((n, c, c), jnp.promote_types(dtype, jnp.float32)))


@st.composite
def _newton_schulz_case(draw):
    # Symmetric PSD input: the Gram matrix of drawn features (its documented domain).
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from([(2,), (), (0,), (1, 2)]))
    c = draw(st.sampled_from([3, 1, 0]))
    b = draw(values((*lead, c, 4), jnp.float32, bound=100.0))
    a = np.asarray(jnp.asarray(b @ np.swapaxes(b, -1, -2) / 4, dtype))
    static = {"iterations": draw(st.sampled_from([5, 1, 2, 0, -1, 5.0, True])),
              "eps": draw(st.sampled_from([1e-12, 1.0, 0, -1, INF, NAN, True]))}
    return Call((a,), static, expect=Expect(a.shape, jnp.promote_types(dtype, jnp.float32)))


def _logits(draw, shapes):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from(shapes))
    return draw(values(shape, dtype, softmax_bound(dtype))), dtype


@st.composite
def _gate_case(draw):
    x, dtype = _logits(draw, [(2, 1, 1, 3), (0, 4), (), (5,)])
    kind = draw(st.sampled_from([None, *F.GATES, "bogus", None, jax.nn.sigmoid]))
    static = {} if kind is None else {"kind": kind}
    return Call((x,), static, expect=Expect(x.shape, dtype))


@st.composite
def _rescale_case(draw):
    x, dtype = _nhwc(draw)
    n, h, w, c = x.shape
    wshape = draw(st.sampled_from([(n, 1, 1, c), (n, h, w, 1), (1,), (c,), (n, h, w, c + 1),
                                   (n + 1, 1, 1, c)]))
    wdtype = draw(st.sampled_from(DTYPES))
    weights = draw(values(wshape, wdtype, bound=1.0))
    return Call((x, weights), expect=Expect(x.shape, dtype))


@st.composite
def _branch_softmax_case(draw):
    x, dtype = _logits(draw, [(2, 3, 4), (1, 1, 1), (0, 2, 3), (2, 0, 3)])
    axis = draw(st.sampled_from([None, 1, -1, 0, 3, -4, 1.0]))
    static = {} if axis is None else {"axis": axis}
    return Call((x,), static, expect=Expect(x.shape, dtype))


@st.composite
def _radix_softmax_case(draw):
    x, dtype = _logits(draw, [(2, 1, 1, 12), (1, 6), (0, 4), (12,), (2, 5)])
    static = {"radix": draw(st.sampled_from([2, 1, 3, 0, -1, 2.0])),
              "cardinality": draw(st.sampled_from([1, 2, 0, 1.0]))}
    return Call((x,), static, expect=Expect(x.shape, dtype))


@st.composite
def _interpolate_case(draw):
    x, dtype = _nhwc(draw)
    n, _, _, c = x.shape
    size = draw(st.sampled_from([(2, 3), (1, 1), (7, 4), (0, 2), (-1, 1), (2,), (2.0, 2), 3]))
    shape = (n, *size, c) if isinstance(size, tuple) and len(size) == 2 else None
    return Call((x,), {"size": size}, expect=Expect(shape, dtype))


_GRID_SIZES = ((3, 2), (1, 1), (0, 2), (2, -1))


def _grid_size(draw, n):
    h, w = draw(st.sampled_from(_GRID_SIZES))
    size = draw(st.sampled_from([(n, h, w, 3), (n, h, w, 3), (n + 1, h, w, 3), (h, w), None]))
    shape = (n, h, w, 2) if isinstance(size, tuple) and len(size) == 4 else None
    return size, shape


@st.composite
def _affine_grid_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from(BATCHES))
    theta = draw(values((n, *draw(st.sampled_from([(2, 3), (2, 3), (3, 3)]))), dtype))
    size, shape = _grid_size(draw, n)
    static = {"size": size, "align_corners": draw(st.booleans())}
    return Call((theta,), static, expect=Expect(shape, jnp.promote_types(dtype, jnp.float32)))


@st.composite
def _perspective_grid_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from(BATCHES))
    matrix = draw(values((n, 3, draw(st.sampled_from([3, 3, 2]))), dtype))
    size, shape = _grid_size(draw, n)
    static = {"size": size, "align_corners": draw(st.booleans()),
              "eps": draw(st.sampled_from([1e-6, 1.0, 0, -1.0, NAN, INF]))}
    return Call((matrix,), static, expect=Expect(shape, jnp.promote_types(dtype, jnp.float32)))


@st.composite
def _tps_grid_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from(BATCHES))
    grid = draw(st.sampled_from([(3, 3), (2, 2), (2, 4)]))
    base = F.tps_base_points(grid)
    base = draw(st.sampled_from([base, base, base[:2], np.zeros((4, 2), np.float32),
                                 np.stack([np.linspace(-1, 1, 4)] * 2, -1)]))
    k = draw(st.sampled_from([base.shape[0], base.shape[0], base.shape[0] + 1]))
    cp = draw(values((n, k, 2), dtype, bound=2.0))
    size, shape = _grid_size(draw, n)
    static = {"size": size, "base_points": base, "align_corners": draw(st.booleans())}
    return Call((cp,), static, expect=Expect(shape, jnp.promote_types(dtype, jnp.float32)))


@st.composite
def _transform_grid_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from(BATCHES))
    transform = draw(st.sampled_from([*F.TRANSFORMS, "bogus"]))
    tps = draw(st.sampled_from([(3, 3), (2, 2), (1, 3), (3,)]))
    try:
        p = F.transform_num_params(transform, tps_grid_size=tps)
    except ValueError:
        p = 6
    p = draw(st.sampled_from([p, p, p + 1]))
    params = draw(values((n, p), dtype, bound=draw(st.sampled_from([1.0, HUGE]))))
    size, shape = _grid_size(draw, n)
    static = {"size": size, "transform": transform, "tps_grid_size": tps,
              "align_corners": draw(st.booleans())}
    return Call((params,), static, expect=Expect(shape, jnp.promote_types(dtype, jnp.float32)),
                post=lambda out: out[0])


@st.composite
def _grid_sample_case(draw):
    x, dtype = _nhwc(draw, channels=(3, 1, 0))
    n = x.shape[0]
    ho, wo = draw(st.sampled_from([(2, 3), (1, 1), (0, 2)]))
    gn = draw(st.sampled_from([n, n, n + 1]))
    gkind = draw(st.sampled_from(["inside", "outside", "huge", "nonfinite", "integer"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    g = rng.uniform(-1.2, 1.2, size=(gn, ho, wo, 2))
    if gkind == "outside":
        g = g * 5
    elif gkind == "huge":
        g = g * 1e30
    elif gkind == "nonfinite":
        g = np.where(rng.random(g.shape) < 0.4, rng.choice([NAN, INF, -INF], size=g.shape), g)
    elif gkind == "integer":
        g = np.round(g)
    gdtype = draw(st.sampled_from([jnp.float32, dtype]))
    grid = np.asarray(jnp.asarray(g, gdtype)) if gkind != "integer" or gdtype != dtype else (
        np.asarray(jnp.asarray(g, jnp.float32)))
    static = {"mode": draw(st.sampled_from(["bilinear", "nearest", "bicubic", "bogus"])),
              "padding_mode": draw(st.sampled_from(["zeros", "border", "reflection", "bogus"])),
              "align_corners": draw(st.sampled_from([False, True, 1])),
              "implementation": draw(st.sampled_from(["auto", "xla", "native", "bogus"]))}
    return Call((x, grid), static, expect=Expect((n, ho, wo, x.shape[-1]), dtype))


_LEADS = ((2,), (), (0,), (1, 2))


def _qk(draw, *, same_d=True):
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from(_LEADS))
    klead = draw(st.sampled_from([lead, lead, (1,) * len(lead), (3,) + lead]))
    tq, tk = draw(st.sampled_from([3, 1, 0])), draw(st.sampled_from([2, 1, 0]))
    d = draw(st.sampled_from([4, 1, 0]))
    dk = d if same_d else draw(st.sampled_from([d, 2]))
    bound = product_bound(dtype, max(d, dk))
    q = draw(values((*lead, tq, d), dtype, bound))
    k = draw(values((*klead, tk, dk), draw(st.sampled_from([dtype, dtype, jnp.float32])),
                    bound))
    return q, k, dtype


def _score_shape(q, k):
    try:
        lead = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except ValueError:
        return None
    return (*lead, q.shape[-2], k.shape[-2])


def _score_case(kind: str):
    @st.composite
    def case(draw):
        q, k, dtype = _qk(draw, same_d=kind != "additive")
        static, akw = {}, {}
        if kind == "scaled_dot":
            static["scale"] = draw(st.sampled_from([None, 0.5, 0, -1.0, INF, NAN, True, "x"]))
        elif kind == "cosine":
            static["temperature"] = draw(st.sampled_from([1.0, 0.1, 0, -1.0, INF, NAN]))
            static["eps"] = draw(st.sampled_from([1e-12, 1.0, 0, -1.0, NAN]))
        elif kind == "additive":
            a = draw(st.sampled_from([3, 1]))
            akw["w_q"] = draw(values((q.shape[-1], a), jnp.float32, 1.0))
            akw["w_k"] = draw(values((k.shape[-1], draw(st.sampled_from([a, a, a + 1]))),
                                     jnp.float32, 1.0))
            akw["v"] = draw(values((a,), jnp.float32, 1.0))
            akw["bias"] = draw(st.sampled_from([None, np.ones((a,), np.float32),
                                                np.ones((a + 1,), np.float32)]))
        shape = _score_shape(q, k)
        return Call((q, k), static, akw, Expect(shape, jnp.result_type(q, k)))
    return case


def _mask_bias(draw, shape: tuple[int, ...], bias_dtype: Any):
    """A boolean mask (with fully-masked rows) and a bias (with -inf entries), or bad ones."""
    tq, tk = shape[-2:]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    mkind = draw(st.sampled_from(["none", "random", "all_false", "row_false", "row_shape",
                                  "bad_shape", "integer"]))
    mask = None
    if mkind == "random":
        mask = rng.random(shape) < 0.5
    elif mkind == "all_false":
        mask = np.zeros(shape, bool)
    elif mkind == "row_false":
        mask = rng.random(shape) < 0.7
        mask[..., :1, :] = False
    elif mkind == "row_shape":
        mask = rng.random((tq, 1)) < 0.5
    elif mkind == "bad_shape":
        mask = np.ones((tk + 1,), bool)
    elif mkind == "integer":
        mask = np.ones(shape, np.int32)
    bkind = draw(st.sampled_from(["none", "finite", "neg_inf", "keys", "bad_shape", "integer"]))
    bias = None
    if bkind in ("finite", "neg_inf"):
        bias = draw(values(shape, bias_dtype, softmax_bound(bias_dtype)))
        if bkind == "neg_inf":
            bias = np.where(rng.random(shape) < 0.5, -np.inf, bias).astype(bias.dtype)
    elif bkind == "keys":
        bias = draw(values((tk,), bias_dtype, 10.0))
    elif bkind == "bad_shape":
        bias = np.zeros((tq + 1, tk + 2), np.float32)
    elif bkind == "integer":
        bias = np.zeros(shape, np.int32)
    return mask, bias


@st.composite
def _attention_weights_case(draw):
    scores, dtype = _logits(draw, [(2, 3, 4), (3, 1), (0, 2, 3), (2, 0), (1, 2, 0)])
    mask, bias = _mask_bias(draw, scores.shape, draw(st.sampled_from([dtype, jnp.float32])))
    return Call((scores,), array_kwargs={"mask": mask, "bias": bias},
                expect=Expect(scores.shape, dtype))


@st.composite
def _attend_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from(_LEADS))
    tq, tk = draw(st.sampled_from([3, 0])), draw(st.sampled_from([2, 1, 0]))
    wts = draw(values((*lead, tq, tk), draw(st.sampled_from([dtype, jnp.float32])), 1.0))
    vtk = draw(st.sampled_from([tk, tk, tk + 1]))
    dv = draw(st.sampled_from([3, 1, 0]))
    v = draw(values((*lead, vtk, dv), dtype))
    return Call((wts, v), expect=Expect((*lead, tq, dv), dtype))


@st.composite
def _attention_case(draw):
    score = draw(st.sampled_from(["scaled_dot", "dot", "cosine", "additive", "bogus"]))
    q, k, dtype = _qk(draw, same_d=score != "additive")
    if draw(st.booleans()):  # the native kernel wants float32 and head dims multiple of 8
        q, k = (np.asarray(jnp.asarray(np.tile(a, 2) if a.shape[-1] == 4 else a, jnp.float32))
                for a in (q, k))
        dtype = jnp.float32
    vdtype = draw(st.sampled_from([dtype, dtype, jnp.float32]))
    dv = draw(st.sampled_from([8, 3, 0]))
    vtk = draw(st.sampled_from([k.shape[-2], k.shape[-2], k.shape[-2] + 1]))
    v = draw(values((*k.shape[:-2], vtk, dv), vdtype))
    static = {"score": score,
              "implementation": draw(st.sampled_from(["auto", "xla", "chunked", "native",
                                                      "bogus"])),
              "q_chunk_size": draw(st.sampled_from([512, 1, 2, 0, 2.0])),
              "k_chunk_size": draw(st.sampled_from([1024, 1, 0]))}
    if score == "scaled_dot":
        static["scale"] = draw(st.sampled_from([None, 0.5, 0.0, INF, NAN]))
    if score == "cosine":
        static["temperature"] = draw(st.sampled_from([1.0, 0.1, 0, -1.0, INF]))
    akw = {}
    if score == "additive":
        a = 3
        akw["score_params"] = draw(st.sampled_from([None, {}, {"w_q": None}])) or {
            "w_q": draw(values((q.shape[-1], a), jnp.float32, 1.0)),
            "w_k": draw(values((k.shape[-1], a), jnp.float32, 1.0)),
            "v": draw(values((a,), jnp.float32, 1.0))}
        if akw["score_params"] == {"w_q": None}:
            akw["score_params"] = None
    shape = _score_shape(q, k)
    mask = bias = None
    out = None
    if shape is not None:
        mask, bias = _mask_bias(draw, shape, draw(st.sampled_from([dtype, jnp.float32])))
        out = (*shape[:-1], dv)
        with contextlib.suppress(ValueError):
            lead = jnp.broadcast_shapes(shape[:-2], *(np.shape(a)[:-2] for a in (mask, bias)
                                                      if a is not None))
            out = (*lead, shape[-2], dv)
    akw.update(mask=mask, bias=bias)
    return Call((q, k, v), static, akw, Expect(out, vdtype))


@st.composite
def _channel_self_attention_case(draw):
    x, dtype = _nhwc(draw)
    gamma = draw(st.sampled_from([np.zeros((1,), np.float32), np.float32(0.5),
                                  np.ones((1,), np.float32), np.ones((2,), np.float32)]))
    return Call((x,), array_kwargs={"gamma": gamma}, expect=Expect(x.shape, dtype))


@st.composite
def _relative_position_bias_case(draw):
    size = draw(st.sampled_from([(2, 3), (1, 1), (0, 2), (2.0, 2), (2,)]))
    heads = draw(st.sampled_from([2, 1, 0]))
    rows = ((2 * size[0] - 1) * (2 * size[1] - 1)
            if len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size) else 1)
    rows = draw(st.sampled_from([rows, rows, rows + 1]))
    dtype = draw(st.sampled_from(DTYPES))
    table = draw(values((rows, heads), dtype))
    shape = (heads, size[0] * size[1], size[0] * size[1]) if len(size) == 2 else None
    return Call((table,), {"size": size}, expect=Expect(shape, dtype))


# name -> strategy of Calls
FUNCTIONS: dict[str, Callable[[], st.SearchStrategy[Call]]] = {
    "global_avg_pool": _pool_case("global"),
    "global_max_pool": _pool_case("global"),
    "channel_avg_pool": _pool_case("channel"),
    "channel_max_pool": _pool_case("channel"),
    "channel_avg_max_pool": _two_descriptor_case,
    "avg_pool_h": _axis_pool_case(2),
    "avg_pool_w": _axis_pool_case(1),
    "avg_pool2d": _avg_pool2d_case,
    "adaptive_avg_pool2d": _adaptive_case,
    "covariance_pool": _covariance_case,
    "newton_schulz_sqrt": _newton_schulz_case,
    "gate": _gate_case,
    "rescale": _rescale_case,
    "branch_softmax": _branch_softmax_case,
    "radix_softmax": _radix_softmax_case,
    "interpolate_nearest": _interpolate_case,
    "affine_grid": _affine_grid_case,
    "perspective_grid": _perspective_grid_case,
    "tps_grid": _tps_grid_case,
    "transform_grid": _transform_grid_case,
    "grid_sample": _grid_sample_case,
    "dot_scores": _score_case("dot"),
    "scaled_dot_scores": _score_case("scaled_dot"),
    "cosine_scores": _score_case("cosine"),
    "additive_scores": _score_case("additive"),
    "attention_weights": _attention_weights_case,
    "attend": _attend_case,
    "attention": _attention_case,
    "channel_self_attention": _channel_self_attention_case,
    "relative_position_bias": _relative_position_bias_case,
}

# Functions of plain Python values (sizes, names): checked below without arrays.
SCALAR_FUNCTIONS = ("get_gate", "get_act", "eca_kernel_size", "make_divisible",
                    "reduced_channels", "tps_base_points", "transform_num_params",
                    "identity_transform_params", "relative_position_index")

# The mechanisms' forwards: they take layers (callables), and each is driven through its
# linen and nnx module by test_mechanism_property.
LAYER_FORWARDS = ("squeeze_excite", "efficient_channel_attention", "gather_excite",
                  "global_context", "second_order_channel", "ge_gather", "cbam_channel_gate",
                  "cbam_spatial_gate", "cbam", "bam", "coordinate_attention",
                  "selective_kernel", "split_attention", "context_aware_pyramid",
                  "pyramid_spatial_map", "pyramid_feature_attention", "localisation_net",
                  "spatial_transformer", "non_local", "position_attention",
                  "dual_attention_head", "criss_cross_attention",
                  "multi_head_self_attention_2d", "conv_norm_act", "aspp")


def test_every_public_function_is_covered():
    """Each public callable of ``functional`` is in the property's tables (or is a forward that
    takes layers, covered through its module)."""
    public = {n for n in F.__all__ if callable(getattr(F, n))}
    covered = set(FUNCTIONS) | set(SCALAR_FUNCTIONS) | set(LAYER_FORWARDS)
    assert public - covered == set(), "add these to test_properties.py"
    assert covered - public == set(), "no longer public"


def _invoke(name: str, call: Call, use_jit: bool) -> Any:
    fn = getattr(F, name)
    if use_jit:
        out = jax.jit(lambda arrays, akw: fn(*arrays, **akw, **call.static))(
            call.arrays, call.array_kwargs)
    else:
        out = fn(*call.arrays, **call.array_kwargs, **call.static)
    return call.post(out) if call.post else out


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@FUNCTION_SETTINGS
@given(data=st.data())
def test_function_property(name, data):
    """Every public array function: a finite output of the documented shape and dtype, or a
    ValueError naming the function."""
    call = data.draw(FUNCTIONS[name](), label="call")
    use_jit = data.draw(st.sampled_from([False, False, True]), label="jit")
    with hard_guard(name):
        check_property((name, *call.names), lambda: _invoke(name, call, use_jit), call.expect)


_SCALAR_VALUES = (1, 2, 3, 8, 200, 0, -1, 2.5, 8.0, True, INF, NAN, None, "3", (3, 3))


@st.composite
def _scalar_call(draw, name: str):
    v = lambda: draw(st.sampled_from(_SCALAR_VALUES))  # noqa: E731
    if name in ("get_gate", "get_act"):
        table = F.GATES if name == "get_gate" else F.ACTIVATIONS
        return (draw(st.sampled_from([*table, "bogus", None, 3, jnp.tanh])),), {}
    if name == "eca_kernel_size":
        return (v(),), {"gamma": draw(st.sampled_from([2.0, 1, 0, -2.0, INF, NAN, None])),
                        "beta": draw(st.sampled_from([1.0, 0, -50.0, INF, NAN]))}
    if name == "make_divisible":
        return (draw(st.sampled_from([12.5, 200 / 16, 0.0, 1, -8.0, INF, NAN, None, True])),), {
            "divisor": v(), "min_value": draw(st.sampled_from([None, 8, 0, -1, 2.5])),
            "round_limit": draw(st.sampled_from([0.9, 0.0, 1.0, NAN, INF]))}
    if name == "reduced_channels":
        return ("caller", v()), {"rd_ratio": draw(st.sampled_from([1 / 16, 0.5, 0, INF, NAN])),
                                 "rd_channels": draw(st.sampled_from([None, 4, 0, 4.0])),
                                 "rd_divisor": draw(st.sampled_from([8, 1, 0, 8.0]))}
    if name in ("tps_base_points",):
        return (draw(st.sampled_from([(3, 3), (2, 4), (1, 3), (0, 0), (3,), (3.0, 3), 3])),), {}
    if name in ("transform_num_params", "identity_transform_params"):
        return (draw(st.sampled_from([*F.TRANSFORMS, "bogus", None])),), {
            "tps_grid_size": draw(st.sampled_from([(3, 3), (2, 4), (1, 3), (3,), (3.0, 3)]))}
    assert name == "relative_position_index"
    return (), {"size": draw(st.sampled_from([(2, 3), (1, 1), (0, 2), (2.0, 2), (2,), 3]))}


def _scalar_ok(name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name in ("get_gate", "get_act"):
        assert callable(out)
    elif name in ("eca_kernel_size", "make_divisible", "reduced_channels",
                  "transform_num_params"):
        assert isinstance(out, int) and not isinstance(out, bool) and out >= 1, (name, out)
        if name == "eca_kernel_size":
            assert out % 2 == 1, out
    else:
        assert _finite(out), name


@pytest.mark.parametrize("name", SCALAR_FUNCTIONS)
@FUNCTION_SETTINGS
@given(data=st.data())
def test_scalar_function_property(name, data):
    """The size and name helpers: a valid result (an int >= 1, a callable, a finite array) or a
    ValueError naming the function (``reduced_channels`` names its caller)."""
    args, kwargs = data.draw(_scalar_call(name), label="args")
    names = ("caller",) if name == "reduced_channels" else (name,)
    with hard_guard(name):
        out = check_property(names, lambda: getattr(F, name)(*args, **kwargs), Expect(None))
    if out is not None:
        _scalar_ok(name, args, kwargs, out)
