"""Forward and gradients of every registered mechanism, ``grid_sample``, ``attention`` and a
small ResNet, from inputs and parameters drawn by NumPy (so they do not depend on the code
generator that compiles them): ``python -m tests.codegen_probe OUT.npz`` writes them.

``tests/test_codegen.py`` runs this under XLA's default code generator in a subprocess and under
the test suite's fast one (``tests/codegen.py``) in process, and compares.
Each case is jitted whole: one compile per program, as users run it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax as aj
from attention_jax import functional as F
from attention_jax.models import resnet as RL

C = 32
# A small ResNet through the stem, max pooling, bottlenecks, SK with grouped convolutions
# (split per group on the CPU), BatchNorm in eval mode and the classifier head.
RESNET = {"layers": (1, 1), "widths": (8, 8), "stem_width": 8, "block": "bottleneck",
          "spatial_conv": "sk", "groups": 2, "base_width": 32}


def _fill(tree, rng: np.random.Generator):
    """Random values of the shapes in ``tree`` (from ``jax.eval_shape``): parameters N(0, 0.3),
    running means N(0, 0.1), running variances U(0.5, 1.5)."""
    def one(path, leaf):
        key = jax.tree_util.keystr(path)
        if "batch_stats" in key and key.endswith("'var']"):
            a = rng.uniform(0.5, 1.5, leaf.shape)
        elif "batch_stats" in key:
            a = 0.1 * rng.standard_normal(leaf.shape)
        else:
            a = 0.3 * rng.standard_normal(leaf.shape)
        return jnp.asarray(a, leaf.dtype)
    return jax.tree_util.tree_map_with_path(one, tree)


def _module_case(module, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(x)
    variables = _fill(jax.eval_shape(module.init, jax.random.key(0), x), rng)
    y = jax.jit(module.apply)(variables, x)
    cot = jnp.asarray(rng.standard_normal(y.shape), y.dtype)
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss(params, others, x):
        return jnp.sum(module.apply({**others, "params": params}, x) * cot)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 2)))(variables["params"], others, x)
    out = {"y": y, "grad_x": g_x}
    for path, g in jax.tree_util.tree_flatten_with_path(g_params)[0]:
        out["grad" + jax.tree_util.keystr(path)] = g
    return out


def _function_case(fn: Callable, args: tuple[np.ndarray, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    args = tuple(jnp.asarray(a) for a in args)
    y = jax.jit(fn)(*args)
    cot = jnp.asarray(rng.standard_normal(y.shape), y.dtype)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=tuple(range(len(args)))))(
        *args)
    return {"y": y, **{f"grad_{i}": g for i, g in enumerate(grads)}}


def cases() -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    """Name -> a function computing that case's arrays."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, C)).astype(np.float32)
    out: dict[str, Callable[[], dict[str, np.ndarray]]] = {}
    for i, name in enumerate(aj.list_attention()):
        out[name] = lambda name=name, i=i: _module_case(aj.create_attention(name, C), x, 10 + i)
    image = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (2, 5, 6, 2)).astype(np.float32)
    for impl in ("xla", "auto"):
        out[f"grid_sample_{impl}"] = lambda impl=impl: _function_case(
            lambda a, g: F.grid_sample(a, g, implementation=impl), (image, grid), 1)
    q, k, v = (rng.standard_normal((2, 3, n, 16)).astype(np.float32) for n in (10, 12, 12))
    mask = rng.uniform(size=(10, 12)) > 0.3
    out["attention_xla_masked"] = lambda: _function_case(
        lambda q, k, v: F.attention(q, k, v, mask=jnp.asarray(mask), implementation="xla"),
        (q, k, v), 2)
    out["attention_chunked"] = lambda: _function_case(
        lambda q, k, v: F.attention(q, k, v, implementation="chunked", q_chunk_size=4,
                                    k_chunk_size=5), (q, k, v), 3)
    pixels = rng.standard_normal((2, 20, 20, 3)).astype(np.float32)
    out["resnet_sk_grouped"] = lambda: _module_case(RL.ResNet(num_classes=5, **RESNET), pixels, 4)
    return out


def run() -> dict[str, np.ndarray]:
    """Every case, flattened to ``"case/array"`` keys (float32 NumPy arrays)."""
    return {f"{case}/{key}": np.asarray(a) for case, fn in cases().items()
            for key, a in fn().items()}


if __name__ == "__main__":
    np.savez(sys.argv[1], **run())
