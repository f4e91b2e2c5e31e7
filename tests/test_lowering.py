"""The suite's lowerings share MLIR contexts (``tests/lowering.py``); this file proves that the
programs they lower are the programs JAX lowers in a fresh context, as in users' processes."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import functional as F
from tests import lowering

C = 32
X = np.random.default_rng(0).standard_normal((2, 9, 9, C)).astype(np.float32)


def test_choice_is_checked():
    assert lowering.choice({}) == "shared"
    assert lowering.choice({"ATTENTION_JAX_TEST_MLIR_CONTEXT": "fresh"}) == "fresh"
    with pytest.raises(ValueError, match=r"ATTENTION_JAX_TEST_MLIR_CONTEXT must be one of"):
        lowering.choice({"ATTENTION_JAX_TEST_MLIR_CONTEXT": "one"})


def test_conftest_installed_it_unless_told_fresh():
    assert lowering.installed() == (lowering.choice() == "shared")
    with lowering.fresh():
        assert not lowering.installed()
    assert lowering.installed() == (lowering.choice() == "shared")


def _programs() -> dict[str, tuple]:
    """Name -> (function, args): every registered mechanism's forward and its gradient with
    respect to parameters and input, grid_sample (native where built) and masked attention."""
    out = {}
    for name in aj.list_attention():
        module = aj.create_attention(name, C)
        variables = jax.eval_shape(module.init, jax.random.key(0), X)
        out[f"{name}/forward"] = (module.apply, (variables, X))

        def loss(v, x, module=module):
            return jnp.sum(module.apply(v, x) ** 2)

        out[f"{name}/grad"] = (jax.grad(loss, argnums=(0, 1)), (variables, X))
    image = np.ones((2, 7, 8, 1), np.float32)
    grid = np.zeros((2, 5, 6, 2), np.float32)
    out["grid_sample/grad"] = (
        jax.grad(lambda a, g: jnp.sum(F.grid_sample(a, g) ** 2), argnums=(0, 1)), (image, grid))
    q = np.ones((2, 3, 10, 16), np.float32)
    mask = np.arange(10)[:, None] >= np.arange(10)[None, :]
    out["attention/grad"] = (
        jax.grad(lambda q: jnp.sum(F.attention(q, q, q, mask=mask) ** 2)), (q,))
    return out


def _lower(fun, args):
    # A new jit wrapper of a new function each time: nothing comes from JAX's tracing or
    # lowering caches.
    lowered = jax.jit(lambda *a: fun(*a)).lower(*args)
    return lowered.as_text(debug_info=True), lowered.compiler_ir().context


def _lower_all(programs):
    # The text carries each operation's location (file and line, up through this file's
    # callers): both ways lower from here, called from the same line.
    return {k: _lower(*p) for k, p in programs.items()}


def test_shared_and_fresh_contexts_lower_the_same_text():
    programs = _programs()
    assert len(programs) >= 2 * len(aj.list_attention()) + 2
    lowered = {}
    for way in ("fresh", "shared"):
        with lowering.fresh() if way == "fresh" else contextlib.nullcontext():
            lowered[way] = _lower_all(programs)  # the same line both ways (see _lower_all)
    fresh, shared = lowered["fresh"], lowered["shared"]
    if lowering.installed():
        # Really two ways: JAX's contexts are new for each program, the suite's are not.
        assert len({id(c) for _, c in fresh.values()}) == len(fresh)
        assert len({id(c) for _, c in shared.values()}) < len(shared) / 2
    for k in programs:
        assert shared[k][0] == fresh[k][0], k


def test_a_context_is_replaced_after_every_uses(monkeypatch):
    monkeypatch.setattr(lowering, "EVERY", 3)
    monkeypatch.setattr(lowering, "_state", {"context": None, "uses": 0, "contexts": 0})
    monkeypatch.setattr(lowering.mlir, "make_ir_context", lowering.shared_context)
    contexts = [_lower(lambda x, k=k: x * k, (np.ones(3, np.float32),))[1] for k in range(7)]
    ids = [id(c) for c in contexts]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[3] == ids[4] == ids[5] != ids[6]
    assert lowering.contexts_made() == 3
