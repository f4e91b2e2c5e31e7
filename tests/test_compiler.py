"""attention_jax.compiler: which runtime XLA:CPU gives a program's convolutions.

The premise is pinned first (XLA's default hands convolutions, reductions and dot products to
YNNPACK; ``"eigen"`` takes the convolutions out and keeps the other two), so a jaxlib that
changes the default fails here rather than silently dropping fusions. Then the numbers: the
library's convolution forms compiled either way agree with PyTorch's ``conv2d``, forward and
both gradients.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import cpu_compiler_options
from attention_jax.compiler import CONVOLUTION_RUNTIMES
from attention_jax.functional.convolution import conv_general_dilated
from tests.parity import assert_close, kernel_to_torch, nchw_to_nhwc, nhwc_to_nchw

RNG = np.random.default_rng(0)
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, kern, dil=1):
    return conv_general_dilated(x, kern, (1, 1), ((dil, dil), (dil, dil)),
                                rhs_dilation=(dil, dil), dimension_numbers=NHWC)


def _probe(x, kern, m):
    """A 3x3 convolution (64 -> 64), a mean over the map (a reduction) and a dot product, the
    convolution's output used twice (as in a network; a reduction that is a convolution's only
    user can take the convolution into its own YNNPACK fusion)."""
    y = _conv(x, kern)
    return y + (y.mean(axis=(1, 2)) @ m)[:, None, None, :]


def _ynn_ops(options: dict[str, str]) -> set[str]:
    """The HLO operations (convolution, reduce, dot) inside the compiled probe's YNNPACK
    fusions (XLA may put several in one fusion: the convolution with the reduction after it)."""
    args = (jnp.ones((2, 28, 28, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 64)))
    text = jax.jit(_probe, compiler_options=options).lower(*args).compile().as_text()
    bodies, name = {}, None
    for line in text.splitlines():
        start = re.match(r"%(\S+) .*\{$", line)
        if start:
            name, bodies[start.group(1)] = start.group(1), []
        elif name is not None:
            bodies[name].append(line)
    called = re.findall(r"%ynn_fusion[.\d]* = .*calls=%([\w.]+)", text)
    assert called, "no YNNPACK fusion at all"
    return {op for c in called for line in bodies[c]
            for op in re.findall(r" (convolution|reduce|dot)\(", line)}


def test_default_runs_convolutions_reductions_and_dots_in_ynnpack():
    assert cpu_compiler_options() == {}
    assert _ynn_ops({}) == {"convolution", "reduce", "dot"}


def test_eigen_takes_only_the_convolutions_out_of_ynnpack():
    options = cpu_compiler_options("eigen")
    assert options
    assert _ynn_ops(options) == {"reduce", "dot"}


def test_other_platforms_get_no_options():
    for platform in ("gpu", "cuda", "tpu"):
        assert cpu_compiler_options("eigen", platform=platform) == {}
    assert cpu_compiler_options("eigen", platform="cpu") == cpu_compiler_options("eigen")


def test_bad_runtime_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cpu_compiler_options: convolutions must be one of "
                                         r"\('ynnpack', 'eigen'\), got 'onednn'"):
        cpu_compiler_options("onednn")


@pytest.mark.parametrize("runtime", CONVOLUTION_RUNTIMES)
@pytest.mark.parametrize("n,cin,cout,dil", [(8, 64, 64, 1), (2, 64, 16, 3), (1, 32, 48, 2)])
def test_both_runtimes_match_torch_conv2d(runtime, n, cin, cout, dil):
    x = RNG.standard_normal((n, 14, 14, cin)).astype(np.float32)
    kern = (RNG.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    ct = RNG.standard_normal((n, 14, 14, cout)).astype(np.float32)

    def fwd_and_grads(a, b, c):
        y, vjp = jax.vjp(lambda a, b: _conv(a, b, dil), a, b)
        return (y, *vjp(c))

    step = jax.jit(fwd_and_grads, compiler_options=cpu_compiler_options(runtime))
    y, gx, gk = step(jnp.asarray(x), jnp.asarray(kern), jnp.asarray(ct))

    xt = nhwc_to_nchw(x).requires_grad_(True)
    kt = torch.from_numpy(kernel_to_torch(kern).copy()).requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, kt, padding=dil, dilation=dil)
    yt.backward(nhwc_to_nchw(ct))
    assert_close(y, nchw_to_nhwc(yt), what="forward")
    assert_close(gx, nchw_to_nhwc(xt.grad), what="input gradient")
    assert_close(gk, kt.grad.numpy().transpose(2, 3, 1, 0), what="kernel gradient")
