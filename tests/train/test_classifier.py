"""A model of either Flax API for the trainer: one layout, one train step, a jitted init."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attention_jax.train import as_classifier, create_model, init_state, make_train_step
from attention_jax.train.checkpoint import _layout


def _step_of(classifier, tx):
    schedule = optax.constant_schedule(1e-2)
    return jax.jit(make_train_step(classifier, tx, schedule, jax.random.PRNGKey(7)))


_SMALL = dict(layers=(1,), widths=(8,), stem_width=8)  # compiles in seconds


def test_nnx_resnet_has_the_linen_layout_and_takes_the_same_step():
    shape = (12, 12, 1)
    linen = as_classifier(create_model("resnet", num_classes=5, attention="se", **_SMALL))
    nnx_ = as_classifier(lambda rngs: create_model("resnet", num_classes=5, attention="se",
                                                   api="nnx", rngs=rngs, **_SMALL))
    assert (linen.api, nnx_.api) == ("linen", "nnx")
    tx = optax.adam(1e-2)
    key = jax.random.key(0, impl="rbg")  # XLA:CPU compiles threefry's init ~3x slower
    state = init_state(linen, tx, key, shape)
    # The same checkpoint layout: names, shapes, dtypes, params and batch statistics alike.
    assert _layout(jax.eval_shape(lambda: init_state(nnx_, tx, key, shape))) == _layout(state)
    assert state["batch_stats"]  # BatchNorm statistics are part of the state
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, *shape))
    y = jnp.arange(8) % 5
    new_linen, m_linen = _step_of(linen, tx)(state, x, y)
    new_nnx, m_nnx = _step_of(nnx_, tx)(state, x, y)  # the linen state, trained as nnx
    np.testing.assert_allclose(m_nnx["loss"], m_linen["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new_nnx), jax.tree.leaves(new_linen), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(new_linen["batch_stats"]["bn1"]["mean"],
                           state["batch_stats"]["bn1"]["mean"])  # statistics were updated
    # Eval mode uses the running statistics, in both APIs.
    variables = {"params": new_linen["params"], "batch_stats": new_linen["batch_stats"]}
    run = lambda c: jax.jit(lambda v: c.apply(v, x, train=False, rng=None)[0])  # noqa: E731
    out_linen, out_nnx = run(linen)(variables), run(nnx_)(variables)
    np.testing.assert_allclose(out_nnx, out_linen, rtol=1e-5, atol=1e-6)
    # bind() hands back an nnx module holding the variables.
    module = nnx_.bind(jax.device_get(variables))
    for kind, name in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(module, kind)),
                     jax.device_get(variables[name]))


def _compilations(fn):
    """How many XLA compilations ``fn()`` runs (persistent cache off, so none is skipped)."""
    events = []

    def listener(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.config.update("jax_enable_compilation_cache", enabled)
    return len(events)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_init_is_one_compilation(api):
    shape = (10, 10, 1)
    if api == "linen":
        model = create_model("resnet", num_classes=3, **_SMALL)
    else:
        model = lambda rngs: create_model(  # noqa: E731
            "resnet", num_classes=3, api="nnx", rngs=rngs, **_SMALL)
    classifier = as_classifier(model)
    tx, key = optax.adam(1e-3), jax.random.key(4, impl="rbg")
    assert _compilations(lambda: init_state(classifier, tx, key, shape)) == 1
    # The counter counts: three eager operations compile three programs (an eager model.init
    # compiled 86 for the tiny ResNet).
    x = jnp.ones((3, 5, 7))
    jax.clear_caches()
    assert _compilations(lambda: jnp.sin(jnp.cos(x)) * 3) == 3


class _DropoutNet(nnx.Module):
    def __init__(self, *, rngs):
        self.lin = nnx.Linear(6, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.lin(x)))


def test_nnx_dropout_is_a_function_of_the_step_key():
    clf = as_classifier(lambda rngs: _DropoutNet(rngs=rngs))
    variables = jax.jit(lambda k: clf.init(k, (6,)))(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 6))
    apply = jax.jit(clf.apply, static_argnames="train")
    a1, _ = apply(variables, x, train=True, rng=jax.random.PRNGKey(5))
    a2, _ = apply(variables, x, train=True, rng=jax.random.PRNGKey(5))
    b, _ = apply(variables, x, train=True, rng=jax.random.PRNGKey(6))
    np.testing.assert_array_equal(a1, a2)  # same key, same mask: resumes are exact
    assert not np.array_equal(a1, b) and float(jnp.mean(a1 == 0)) > 0.2  # dropout is on
    e1, _ = apply(variables, x, train=False, rng=jax.random.PRNGKey(5))
    e2, stats = apply(variables, x, train=False, rng=jax.random.PRNGKey(6))
    np.testing.assert_array_equal(e1, e2)  # eval: no dropout, running statistics unchanged
    assert float(jnp.mean(e1 == 0)) == 0.0
    jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])


class _Counter(nnx.Variable):
    pass


class _WithCounter(nnx.Module):
    def __init__(self, *, rngs):
        self.lin = nnx.Linear(2, 2, rngs=rngs)
        self.calls = _Counter(jnp.zeros(()))

    def __call__(self, x):
        return self.lin(x)


def test_nnx_state_the_trainer_cannot_carry_is_refused():
    with pytest.raises(ValueError, match="train: model must be an nnx model holding only "
                                         "nnx.Param, nnx.BatchStat and RNG state, got "
                                         "variables of type _Counter"):
        as_classifier(lambda rngs: _WithCounter(rngs=rngs))
    with pytest.raises(ValueError, match="as_classifier: model must be a linen Module"):
        as_classifier(42)
