"""A Flax model of either API as pure functions, the train state and the train step.

``as_classifier`` turns a linen module, or an nnx model (its constructor), into ``init`` and
``apply`` over plain dicts ``{"params", "batch_stats"}`` with linen's layout, so the trainer,
its checkpoints and ``evaluate`` do not depend on the API. nnx models are split into graphdef
and state (``nnx.split``) and merged back inside the jitted functions, i.e. trained
functionally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from attention_jax._validation import fail

__all__ = ["Classifier", "as_classifier", "init_state", "make_train_step", "cross_entropy"]


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A classifier of either Flax API as pure functions over plain dicts.

    Attributes:
      api: ``"linen"`` or ``"nnx"``.
      init: ``init(key, input_shape (H, W, C)) -> {"params", "batch_stats"}`` (nested dicts
        of arrays; ``batch_stats`` may be empty). Pure: jit it.
      apply: ``apply(variables, x (N, H, W, C), *, train, rng) -> (logits (N, K),
        batch_stats)``, the updated statistics in training mode, the given ones otherwise;
        ``rng`` (a key, or None outside training) seeds dropout.
      bind: ``bind(variables)`` -> the model to hand back after training (the linen module,
        or an nnx module holding ``variables``, in eval mode).
    """

    api: str
    init: Callable[[jax.Array, tuple[int, ...]], dict[str, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]
    bind: Callable[[dict[str, Any]], Any]


def as_classifier(model: Any) -> Classifier:
    """Wrap a model of either Flax API for the trainer.

    Args:
      model: a linen module ``model.apply(variables, x (N, H, W, C), train=...)`` whose
        variables are ``params`` (and ``batch_stats``); or a constructor ``build(rngs) ->
        nnx.Module`` (the nnx model is built inside ``init``, so ``jit`` compiles it once);
        or a built ``nnx.Module`` (its own parameters become the default variables). An nnx
        model may hold ``nnx.Param``, ``nnx.BatchStat`` and RNG streams (reseeded from the
        step's key, so dropout is a function of ``(seed, step)``).

    Returns:
      A ``Classifier``; its variables have the same layout for both APIs (linen's).
    """
    import flax.linen as nn

    if isinstance(model, nn.Module):
        return _linen_classifier(model)
    from flax import nnx

    if isinstance(model, nnx.Module):
        return _nnx_classifier(lambda rngs: model, built=model)
    if callable(model):
        return _nnx_classifier(model)
    raise fail("as_classifier", "model", "a linen Module, an nnx Module or a constructor "
               "rngs -> nnx.Module", type(model).__name__)


def _linen_classifier(model: Any) -> Classifier:
    def init(key, input_shape):
        variables = dict(model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False))
        params, batch_stats = variables.pop("params"), variables.pop("batch_stats", {})
        if variables:
            raise fail("train", "model", "a model whose variables are params and batch_stats",
                       sorted(variables))
        return {"params": params, "batch_stats": batch_stats}

    def apply(variables, x, *, train, rng):
        rngs = {} if rng is None else {"dropout": rng}
        if not variables["batch_stats"]:
            logits = model.apply({"params": variables["params"]}, x, train=train, rngs=rngs)
            return logits, variables["batch_stats"]
        if not train:
            return model.apply(variables, x, train=False, rngs=rngs), variables["batch_stats"]
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs=rngs)
        return logits, updates["batch_stats"]

    return Classifier("linen", init, apply, lambda variables: model)


def _nnx_classifier(build: Callable[[Any], Any], *, built: Any = None) -> Classifier:
    from flax import nnx

    template = built if built is not None else nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    graphdef, params_t, stats_t, rest_t = nnx.split(template, nnx.Param, nnx.BatchStat, ...)
    others = sorted({type(v).__name__ for v in jax.tree.leaves(
        rest_t, is_leaf=lambda v: isinstance(v, nnx.Variable))
        if not isinstance(v, nnx.RngState)})
    if others:
        raise fail("train", "model", "an nnx model holding only nnx.Param, nnx.BatchStat and "
                   "RNG state", f"variables of type {', '.join(others)}")

    def fill(template_state, values):
        state = jax.tree.map(lambda v: v, template_state)  # fresh Variables in this trace
        nnx.replace_by_pure_dict(state, values)
        return state

    def merge(variables, rng):
        module = nnx.merge(graphdef, fill(params_t, variables["params"]),
                           fill(stats_t, variables["batch_stats"]),
                           jax.tree.map(lambda v: v, rest_t))
        tags = sorted({s.key.tag for _, s in nnx.iter_graph(module)
                       if isinstance(s, nnx.RngStream)})
        if tags:  # every stream restarts from the step's key: dropout depends on (seed, step)
            rng = jax.random.PRNGKey(0) if rng is None else rng
            nnx.reseed(module, **{t: jax.random.fold_in(rng, i) for i, t in enumerate(tags)})
        return module

    def init(key, input_shape):
        module = build(nnx.Rngs(key))
        _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}

    def apply(variables, x, *, train, rng):
        module = merge(variables, rng)
        if train:
            module.train()
        else:
            module.eval()
        logits = module(x)
        return logits, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))

    def bind(variables):
        module = merge(jax.tree.map(jnp.asarray, variables), jax.random.PRNGKey(0))
        module.eval()
        return module

    return Classifier("nnx", init, apply, bind)


def init_state(
    classifier: Classifier,
    tx: optax.GradientTransformation,
    key: jax.Array,
    input_shape: tuple[int, ...],
    *,
    sharding: NamedSharding | None = None,
) -> dict[str, Any]:
    """A fresh train state, built by one jitted call (eager init compiles op by op).

    Args:
      classifier: the model (``as_classifier``).
      tx: the optimiser.
      key: the parameter-initialisation key.
      input_shape: (H, W, C) of one image.
      sharding: where the state lives (default: JAX's default device).

    Returns:
      ``{"step": int32 (), "params", "opt_state", "batch_stats"}``.
    """

    def build(key):
        variables = classifier.init(key, input_shape)
        return {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
                "opt_state": tx.init(variables["params"]),
                "batch_stats": variables["batch_stats"]}

    return jax.jit(build, out_shardings=sharding)(key)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy in float32.

    Args:
      logits: (N, K) logits.
      labels: (N,) integer labels.

    Returns:
      (N,) losses.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_train_step(
    classifier: Classifier,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    key: jax.Array,
    *,
    train_mode: bool = True,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """The pure train step (jit it, donating the state).

    Args:
      classifier: the model (``as_classifier``).
      tx: the optimiser; ``schedule``: its learning rate per step (for the metrics).
      schedule: step -> learning rate.
      key: the run's key; step ``s`` uses ``fold_in(key, s)`` for dropout.
      train_mode: run the model in training mode (BatchNorm on batch statistics, updating
        the running ones; dropout on). False runs it in eval mode, as a frozen backbone
        needs: BatchNorm uses and keeps the running statistics, dropout is off.

    Returns:
      ``step(state, images (B, H, W, C), labels (B,)) -> (state, {"loss", "accuracy",
      "lr"})``: one optimiser step on the mean cross-entropy.
    """

    def step(state, images, labels):
        rng = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state["batch_stats"]}
            logits, stats = classifier.apply(variables, images, train=train_mode, rng=rng)
            return cross_entropy(logits, labels).mean(), (logits, stats)

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1,
                     "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "batch_stats": stats}
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": accuracy, "lr": schedule(state["step"])}

    return step
