"""Parity checks of our modules against PyTorch references: same weights, same input,
forward and gradients (w.r.t. the input and every parameter) compared in float32."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

# The weight conversion ships with the references (the benchmark uses it too); re-exported here
# for the tests.
from attention_jax.torch_reference.weights import (
    jax_to_torch_state,
    kernel_to_torch,
    load_into_torch,
    nchw_to_nhwc,
    nhwc_to_nchw,
    to_torch,
)

__all__ = ["to_torch", "nhwc_to_nchw", "nchw_to_nhwc", "kernel_to_torch", "jax_to_torch_state",
           "load_into_torch", "randomize_batch_stats", "assert_close", "check_module_parity",
           "check_linen_equals_nnx"]


@jax.jit
def randomize_batch_stats(variables: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """Non-trivial running statistics so eval-mode BatchNorm is actually exercised."""
    if "batch_stats" not in variables:
        return variables
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    keys = jax.random.split(key, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        r = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        new.append(r if jax.tree_util.keystr(path).endswith("'var']") else r - 1.0)
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(tree, new)}


@partial(jax.jit, static_argnames=("rel", "zero_scale"))
def perturb_params(variables: dict[str, Any], key: jax.Array, rel: float = 0.2,
                   zero_scale: float = 0.1) -> dict[str, Any]:
    """Move every parameter off its initialisation: ``p + s * N(0, 1)``.

    ``s = rel * rms(p)``, or ``zero_scale`` for an all-zero leaf (DANet's and CCNet's gamma,
    the non-local block's output BatchNorm scale and the STN's final layer start at 0, which
    makes the module an identity at init: parity there would prove nothing).
    """
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(key, len(leaves))
    new = []
    for leaf, k in zip(leaves, keys, strict=True):
        rms = jnp.sqrt(jnp.mean(jnp.square(leaf.astype(jnp.float32))))
        s = jnp.where(rms > 0, rel * rms, zero_scale).astype(leaf.dtype)
        new.append(leaf + s * jax.random.normal(k, leaf.shape, leaf.dtype))
    return {**variables, "params": jax.tree_util.tree_unflatten(tree, new)}


def assert_close(actual, expected, *, rtol: float = 1e-5, atol_rel: float = 1e-5, what=""):
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol_rel * scale, err_msg=what)


def check_module_parity(
    module,
    torch_module: torch.nn.Module,
    x: np.ndarray,
    *,
    variables: dict[str, Any] | None = None,
    seed: int = 0,
    rtol: float = 1e-5,
    atol_rel: float = 1e-5,
    apply_kwargs: dict[str, Any] | None = None,
    output_to_torch_layout=None,
    zero_grads: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Forward and gradient parity of a linen module against a torch reference in eval mode.

    ``x`` is NHWC float32 (anything else is passed through unchanged to both sides).
    ``zero_grads`` names (torch names) parameters whose gradient is zero in exact arithmetic,
    e.g. a key projection's bias, which shifts every logit of a softmax row by one constant:
    both sides' rounding noise there must stay below ``atol_rel`` times the largest gradient of
    any parameter, instead of being compared with each other.
    Returns the variables used, so callers can reuse them (e.g. for linen == nnx).
    """
    apply_kwargs = apply_kwargs or {}
    x = jnp.asarray(x, jnp.float32)
    k_init, k_stats, k_cot = jax.random.split(jax.random.key(seed), 3)
    if variables is None:
        variables = jax.jit(partial(module.init, **apply_kwargs))(k_init, x)
        variables = randomize_batch_stats(dict(variables), k_stats)
    load_into_torch(torch_module, variables)
    torch_module.eval()

    def loss(params, others, x, cot):
        out = module.apply({**others, "params": params}, x, **apply_kwargs)
        return jnp.sum(out * cot)

    y = jax.jit(partial(module.apply, **apply_kwargs))(variables, x)
    cot = jax.random.normal(k_cot, y.shape, jnp.float32)
    others = {k: v for k, v in variables.items() if k != "params"}
    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 2)))(variables["params"], others, x, cot)

    xt = nhwc_to_nchw(x).requires_grad_(True)
    yt = torch_module(xt)
    to_nhwc = output_to_torch_layout or nchw_to_nhwc
    assert_close(y, to_nhwc(yt), rtol=rtol, atol_rel=atol_rel, what="forward")
    cot_t = nhwc_to_nchw(cot) if y.ndim == 4 else to_torch(cot)
    (yt * cot_t).sum().backward()
    assert_close(g_x, nchw_to_nhwc(xt.grad), rtol=rtol, atol_rel=atol_rel, what="grad x")
    named = dict(torch_module.named_parameters())
    grads = jax_to_torch_state(g_params)
    assert set(grads) == set(named), (sorted(grads), sorted(named))
    assert set(zero_grads) <= set(grads), sorted(set(zero_grads) - set(grads))
    largest = max(float(np.abs(g).max(initial=0.0)) for g in grads.values())
    for name, g in grads.items():
        if name in zero_grads:
            for side, a in (("jax", g), ("torch", named[name].grad.numpy())):
                assert float(np.abs(a).max()) <= atol_rel * largest, (name, side, largest)
            continue
        assert_close(g, named[name].grad.numpy(), rtol=rtol, atol_rel=atol_rel,
                     what=f"grad {name}")
    return variables


def check_linen_equals_nnx(linen_module, nnx_module, x, variables, *, apply_kwargs=None,
                           atol: float = 0.0) -> None:
    """The nnx module, loaded with the linen variables, gives the same output (eval mode)."""
    from flax import nnx

    from attention_jax import load_linen_variables

    load_linen_variables(nnx_module, variables)
    if hasattr(nnx_module, "eval"):
        nnx_module.eval()
    a = jax.jit(partial(linen_module.apply, **(apply_kwargs or {})))(variables, x)
    b = nnx.jit(lambda m, x: m(x))(nnx_module, x)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=atol or 1e-6)
