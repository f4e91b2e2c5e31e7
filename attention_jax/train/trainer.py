"""The training loop: optax, a jit-compiled step, data parallelism, orbax checkpoints, resume.

The pieces, each usable alone (big_vision's trainers have the same shape):

- ``TrainConfig``: the run; validated when built (bad numbers are a ``ValueError``).
- ``as_classifier``: a linen module, or an nnx model's constructor, as two pure functions
  (``init``, ``apply``) over plain dicts of parameters and batch statistics, so the rest of the
  trainer does not know which Flax API the model uses. nnx models are split into graphdef and
  state and trained functionally; their checkpoints have the linen layout.
- ``init_state``: the train state ``{"step", "params", "opt_state", "batch_stats"}`` of a
  seed, built by one jitted call.
- ``make_train_step``: the pure step ``(state, images, labels) -> (state, metrics)``.
- ``Checkpointer`` and ``restore_or_init``: orbax checkpoints of the state and the run's
  settings; the newest readable step is restored (a damaged newer one is set aside, saying
  so), and a resume whose settings differ from the checkpoint's is refused.
- ``MetricsWriter``: metric records as strict JSON lines (non-finite numbers are ``null``)
  and as one line each on stdout.
- ``train``: the loop that joins them; ``evaluate``: loss and accuracy over a loader.

Data parallelism: the global batch is sharded over a 1-D ``jax.sharding.Mesh`` of devices
(axis ``"data"``), parameters and optimiser state are replicated, and ``jit`` inserts the
gradient all-reduce. The maths is that of one device with the whole batch, so the loss curve on
1 and N devices agrees up to float summation order.

Multi-host: call ``jax.distributed.initialize()`` (coordinator address, process count and id,
or auto-detected on TPU/SLURM) before ``train``; ``jax.devices()`` then spans every host, each
process loads only its rows of each global batch (``Loader`` is a pure function of seed and
step, so the processes agree on the order) and ``jax.make_array_from_process_local_data``
assembles the global array. ``checkpoint_dir`` must then be on storage every host sees; process
0 alone writes the metrics file and the log lines.

Resume: a checkpoint holds the step, parameters, optimiser state and batch statistics, plus the
run's whole config; the data order and every random key derive from ``(seed, step)``, so a run
stopped after a checkpoint and resumed ends with the same parameters as an uninterrupted run.
A resume with other settings (``RESUME_KEYS``) would not be exact and is refused unless
``resume_override`` names the settings that may change.

Non-finite losses: by default the run stops with ``NonFiniteLossError`` at the first logged or
checkpointed window holding a non-finite loss, before saving that state (``on_nonfinite=
"continue"`` keeps going). Metric files stay strict JSON either way: non-finite values are
written as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attention_jax._validation import check_choice, check_positive_int, fail
from attention_jax.data.loader import Loader, load

# The one place the trainer takes its model factory from.
from attention_jax.train.models import create_model, list_models

__all__ = [
    "TrainConfig", "TrainResult", "train", "evaluate", "make_optimizer", "CheckpointError",
    "NonFiniteLossError", "Classifier", "as_classifier", "init_state", "make_train_step",
    "Checkpointer", "restore_or_init", "MetricsWriter", "RESUME_KEYS",
]

_FORMAT = "attention-jax-train/1"
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
APIS = ("linen", "nnx")
ON_NONFINITE = ("stop", "continue")

RESUME_KEYS = ("model", "api", "attention", "model_overrides", "dataset", "distort", "seed",
               "steps", "batch_size", "devices", "optimizer", "lr", "schedule", "momentum",
               "weight_decay", "clip_norm")
"""Settings a resumed run must share with its checkpoint (they change the arithmetic)."""


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used (empty for --resume, another run's, or taken)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (``on_nonfinite="stop"``)."""


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags map one to one).

    Checked when built: a ``ValueError`` names the field, what it must be and what it got.

    Attributes:
      dataset: ``"digits/<variant>"`` or a prepared tfds image dataset name.
      model: a name ``create_model`` knows (``"cnn"``, ``"stcnn"``, ``"resnet"``).
      api: ``"linen"`` or ``"nnx"`` (the Flax API of the model; same checkpoint layout).
      attention: a registered attention name for models that take one, or None.
      steps: total optimiser steps of the run (a resumed run continues up to it).
      batch_size: global batch, split evenly over ``devices``.
      optimizer: ``"adam"`` (AdamW) or ``"sgd"`` (with ``momentum``).
      lr: peak learning rate, a finite number > 0.
      schedule: ``"cosine"`` (decay to 0 over ``steps``) or ``"constant"``.
      momentum: SGD momentum in [0, 1) (0 = plain SGD).
      weight_decay: decoupled weight decay (adam) or L2 (sgd), finite and >= 0.
      clip_norm: global gradient-norm clipping threshold (> 0), or None for none.
      seed: integer >= 0; parameters, data order, dropout and distortions derive from it.
      distort: an STN-paper distortion applied on the fly (``"R"``, ``"RTS"``, ``"P"``,
        ``"E"``), or None.
      data_dir: tfds data directory (None: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: allow tfds to download a dataset that is not prepared.
      devices: number of devices (None: all JAX sees).
      checkpoint_dir: orbax checkpoint directory, or None for no checkpoints.
      checkpoint_every: save every this many steps (and at the end).
      resume: continue the run checkpointed in ``checkpoint_dir``.
      resume_step: with ``resume``, the step to continue from (None: the newest readable).
      resume_override: settings of ``RESUME_KEYS`` that may differ from the checkpoint's.
      metrics_file: JSON-lines metrics file, or None.
      log_every: log a train record every this many steps (and at the end).
      eval_batch_size: batch size of the final evaluation.
      eval: evaluate on the test split at the end.
      progress: show a progress bar (stderr).
      on_nonfinite: ``"stop"`` (default) or ``"continue"`` when the loss is NaN or infinite.
    """

    dataset: str = "digits/RTS"
    model: str = "cnn"
    api: str = "linen"
    attention: str | None = None
    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    seed: int = 0
    distort: str | None = None
    data_dir: str | None = None
    download: bool = False
    devices: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500
    resume: bool = False
    resume_step: int | None = None
    resume_override: tuple[str, ...] = ()
    metrics_file: str | None = None
    log_every: int = 50
    eval_batch_size: int = 256
    eval: bool = True
    progress: bool = True
    on_nonfinite: str = "stop"

    def __post_init__(self) -> None:
        fn = "train"
        for name in ("dataset", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise fail(fn, name, "a non-empty string", repr(getattr(self, name)))
        check_choice(fn, "api", self.api, APIS)
        check_choice(fn, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(fn, "schedule", self.schedule, SCHEDULES)
        check_choice(fn, "on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_batch_size"):
            check_positive_int(fn, name, getattr(self, name))
        check_positive_int(fn, "seed", self.seed, minimum=0)
        if self.devices is not None:
            check_positive_int(fn, "devices", self.devices)
        _check_number(fn, "lr", self.lr, "a finite number > 0", lambda v: v > 0)
        _check_number(fn, "momentum", self.momentum, "a finite number in [0, 1)",
                      lambda v: 0 <= v < 1)
        _check_number(fn, "weight_decay", self.weight_decay, "a finite number >= 0",
                      lambda v: v >= 0)
        if self.clip_norm is not None:
            _check_number(fn, "clip_norm", self.clip_norm, "None or a positive number",
                          lambda v: v > 0)
        if self.attention is not None:
            from attention_jax.registry import list_attention

            check_choice(fn, "attention", self.attention, list_attention())
        if self.distort is not None:
            from attention_jax.data.transforms import VARIANTS

            check_choice(fn, "distort", self.distort, VARIANTS)
        for name in ("resume", "download", "eval", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise fail(fn, name, "True or False", repr(getattr(self, name)))
        for name in ("checkpoint_dir", "metrics_file", "data_dir"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                    raise fail(fn, name, "None or a path", repr(value))
                setattr(self, name, os.fspath(value))
        if self.resume and not self.checkpoint_dir:
            raise fail(fn, "checkpoint_dir", "given with resume", None)
        if self.resume_step is not None:
            check_positive_int(fn, "resume_step", self.resume_step)
            if not self.resume:
                raise fail(fn, "resume", "True with resume_step", self.resume)
        if isinstance(self.resume_override, str):
            self.resume_override = (self.resume_override,)
        self.resume_override = tuple(self.resume_override)
        for key in self.resume_override:
            check_choice(fn, "resume_override", key, RESUME_KEYS)


def _check_number(fn: str, arg: str, value: Any, expected: str,
                  ok: Callable[[float], bool]) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or not ok(value)):
        raise fail(fn, arg, expected, value)


@dataclasses.dataclass
class TrainResult:
    """What a run returns.

    Attributes:
      model: the trained model: the linen module (use with ``variables``), or for
        ``api="nnx"`` an nnx module holding the final variables (in eval mode).
      variables: ``{"params", "batch_stats"}`` (host numpy; ``batch_stats`` may be empty).
      step: optimiser steps completed.
      history: the metric records (``split`` ``"train"`` or ``"test"``), as written.
      eval: ``{"loss", "accuracy", "error", "count"}`` of the test split, or None.
      num_params: number of parameters.
      compile_time_s: compile time of the train step.
      step_time_s: mean wall time per step of this process's loop.
      input_shape: (H, W, C) of the images.
      state: the final train state as checkpointed (``step``, ``params``, ``opt_state``,
        ``batch_stats``; host numpy).
    """

    model: Any
    variables: dict[str, Any]
    step: int
    history: list[dict[str, Any]]
    eval: dict[str, float] | None
    num_params: int
    compile_time_s: float
    step_time_s: float
    input_shape: tuple[int, ...]
    state: dict[str, Any] | None = None


def make_optimizer(config: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimiser and learning-rate schedule of a config.

    Args:
      config: its ``optimizer`` (``"adam"`` or ``"sgd"`` with ``momentum``), ``lr``,
        ``schedule`` (``"cosine"`` decay to 0 over ``steps``, or ``"constant"``) and
        ``weight_decay`` (decoupled, AdamW-style, for adam; L2 added to gradients for sgd)
        and ``clip_norm`` (global gradient-norm clipping applied first; None disables it).
        The ST-CNN on digits/RTS still collapsed to chance on one of two seeds at lr 3e-3
        with clipping, and trained at lr 1e-3.

    Returns:
      ``(tx, schedule)``: the gradient transformation and the callable step -> learning rate.
    """
    check_choice("train", "optimizer", config.optimizer, OPTIMIZERS)
    check_choice("train", "schedule", config.schedule, SCHEDULES)
    if config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(config.lr, decay_steps=config.steps)
    else:
        schedule = optax.constant_schedule(config.lr)
    if config.optimizer == "adam":
        tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                         optax.sgd(schedule, momentum=config.momentum or None))
    if config.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
    return tx, schedule


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A classifier of either Flax API as pure functions over plain dicts.

    Attributes:
      api: ``"linen"`` or ``"nnx"``.
      init: ``init(key, input_shape (H, W, C)) -> {"params", "batch_stats"}`` (nested dicts
        of arrays; ``batch_stats`` may be empty). Pure: jit it.
      apply: ``apply(variables, x (N, H, W, C), *, train, rng) -> (logits (N, K),
        batch_stats)``, the updated statistics in training mode, the given ones otherwise;
        ``rng`` seeds dropout.
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
        if not variables["batch_stats"]:
            logits = model.apply({"params": variables["params"]}, x, train=train,
                                 rngs={"dropout": rng})
            return logits, variables["batch_stats"]
        if not train:
            return model.apply(variables, x, train=False), variables["batch_stats"]
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": rng})
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


def _build_classifier(config: TrainConfig, num_classes: int, input_shape: tuple[int, ...],
                      overrides: dict[str, Any]) -> Classifier:
    kwargs = dict(num_classes=num_classes, in_channels=input_shape[-1],
                  attention=config.attention, **overrides)
    if config.api == "linen":
        return as_classifier(create_model(config.model, api="linen", **kwargs))
    # Validate the name and options at once, not inside the first jitted call.
    from flax import nnx

    nnx.eval_shape(lambda: create_model(config.model, api="nnx", rngs=nnx.Rngs(0), **kwargs))
    return as_classifier(lambda rngs: create_model(config.model, api="nnx", rngs=rngs, **kwargs))


# --------------------------------------------------------------------------- state and step


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


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_train_step(
    classifier: Classifier,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    key: jax.Array,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """The pure train step (jit it, donating the state).

    Args:
      classifier: the model (``as_classifier``).
      tx: the optimiser; ``schedule``: its learning rate per step (for the metrics).
      schedule: step -> learning rate.
      key: the run's key; step ``s`` uses ``fold_in(key, s)`` for dropout.

    Returns:
      ``step(state, images (B, H, W, C), labels (B,)) -> (state, {"loss", "accuracy",
      "lr"})``: one optimiser step on the mean cross-entropy.
    """

    def step(state, images, labels):
        rng = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state["batch_stats"]}
            logits, stats = classifier.apply(variables, images, train=True, rng=rng)
            return _cross_entropy(logits, labels).mean(), (logits, stats)

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1,
                     "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "batch_stats": stats}
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": accuracy, "lr": schedule(state["step"])}

    return step


# --------------------------------------------------------------------------- checkpoints


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _cause(err: BaseException) -> str:
    """One line saying why: the innermost error, without TensorStore's spec dump."""
    inner, seen = err, set()
    while (inner.__cause__ or inner.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    text = (str(inner) or type(inner).__name__).strip().splitlines()[0]
    for cut in (" [source locations=", " See full TensorStore details", " [tensorstore_spec="):
        text = text.split(cut)[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _check_writable(arg: str, path: str, *, directory: bool) -> None:
    """``path`` can be created (or used) as a directory/file: fail now, not after training."""
    what = "a directory" if directory else "a file"
    if os.path.exists(path) and os.path.isdir(path) != directory:
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, which is "
                   f"{'a directory' if os.path.isdir(path) else 'a file'}")
    parent = path if os.path.isdir(path) else os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent):
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, which lies under the "
                   f"file {parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, but {parent!r} is not "
                   "writable")


class Checkpointer:
    """A run's orbax checkpoints: one directory per step holding the train state (``state``)
    and the run's settings as JSON (``meta``).

    Saves are synchronous (the train step donates the state's buffers right after a save);
    ``keep`` steps are kept. Stale temporary directories of a killed save are removed when a
    checkpointer is opened for writing.

    Args:
      path: the checkpoint directory.
      create: create it (and write into it); False opens an existing one read-only.
      keep: how many steps to keep.
    """

    def __init__(self, path: str, *, create: bool = True, keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self.path = os.path.abspath(path)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=False,
            cleanup_tmp_directories=create)
        self._manager = ocp.CheckpointManager(
            self.path, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        """The completed steps, ascending."""
        return sorted(self._manager.all_steps())

    def read_meta(self, step: int) -> dict[str, Any]:
        """The settings saved with ``step`` (raises on a damaged or foreign checkpoint)."""
        import orbax.checkpoint as ocp

        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"train: checkpoint_dir must hold an attention-jax training "
                                  f"checkpoint, got {self.path} (step {step}) with metadata "
                                  f"{str(meta)[:200]}")
        return meta

    def layout(self, step: int) -> dict[str, tuple[tuple[int, ...], str]] | None:
        """The saved state's arrays, ``{path: (shape, dtype)}``, from its metadata file."""
        metadata = self._manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        return None if tree is None else _layout(tree)

    def restore(self, step: int, abstract_state: Any) -> dict[str, Any]:
        """The state saved at ``step``, laid out (shapes, dtypes, shardings) as the target."""
        import orbax.checkpoint as ocp

        return self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write ``state`` and ``meta`` as ``step`` (an existing step is an error)."""
        import orbax.checkpoint as ocp

        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def set_aside(self, step: int, suffix: str) -> str:
        """Rename step ``step`` to ``<step>.<suffix>`` (kept, no longer a checkpoint).

        Returns:
          The new directory name.
        """
        name = f"{step}.{suffix}"
        n = 1
        while os.path.exists(os.path.join(self.path, name)):
            n += 1
            name = f"{step}.{suffix}-{n}"
        if jax.process_index() == 0:
            os.rename(os.path.join(self.path, str(step)), os.path.join(self.path, name))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"attention-jax set aside {step}")
        self._manager.reload()
        return name

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in flat}


def _meta(config: TrainConfig, *, num_classes: int, input_shape: tuple[int, ...],
          devices: int, overrides: dict[str, Any]) -> dict[str, Any]:
    return {"format": _FORMAT, "model": config.model, "api": config.api,
            "attention": config.attention, "dataset": config.dataset,
            "distort": config.distort, "num_classes": num_classes,
            "input_shape": list(input_shape), "devices": devices,
            "model_overrides": _jsonable(overrides),
            "config": _jsonable(dataclasses.asdict(config))}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _run_settings(config: TrainConfig, devices: int, overrides: dict[str, Any]) -> dict:
    settings = {k: getattr(config, k) for k in RESUME_KEYS if hasattr(config, k)}
    settings.update(devices=devices, model_overrides=_jsonable(overrides))
    return settings


def _saved_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings; keys older checkpoints lack get the value they implied."""
    saved = dict(meta.get("config") or {})
    saved.setdefault("api", "linen")
    saved["devices"] = meta.get("devices", saved.get("devices"))
    saved["model_overrides"] = meta.get("model_overrides", {})
    return saved


def _check_settings(meta: dict[str, Any], config: TrainConfig, settings: dict[str, Any],
                    path: str, step: int) -> None:
    """Refuse a resume whose settings differ from the checkpoint's (unless overridden)."""
    saved = _saved_settings(meta)
    differ = [k for k in RESUME_KEYS
              if k not in config.resume_override and k in saved and saved[k] != settings[k]
              and not (k == "devices" and saved[k] is None)]  # older checkpoints: unresolved
    if differ:
        have = ", ".join(f"{k}={saved[k]!r}" for k in differ)
        want = ", ".join(f"{k}={settings[k]!r}" for k in differ)
        flags = " ".join(f"--resume-override {k}" for k in differ)
        raise CheckpointError(
            f"train: --resume checkpoint must have the same {', '.join(differ)}, got {path} "
            f"(step {step}) holding {have} while this run asks for {want}; a resume with "
            f"other settings is not exact: pass {flags} to continue anyway (nothing was "
            "overwritten)")


def _check_checkpoint_dir(config: TrainConfig, settings: dict[str, Any]) -> str | None:
    """Check the checkpoint directory before anything is written; returns its path.

    Without resume it must be new or hold no checkpoint; with resume it must hold one, and the
    settings of its newest step with readable settings must match the run's.
    """
    if not config.checkpoint_dir:
        return None
    path = os.path.abspath(config.checkpoint_dir)
    _check_writable("checkpoint_dir", path, directory=True)
    if not os.path.isdir(path):
        if config.resume:
            raise CheckpointError(f"train: --resume needs a checkpoint in checkpoint_dir, got "
                                  f"{path} which does not exist")
        return path
    reader = Checkpointer(path, create=False)
    try:
        steps = reader.steps()
        if not config.resume:
            if steps:
                raise CheckpointError(
                    f"train: checkpoint_dir must be empty or new (without --resume), got "
                    f"{path} holding a checkpoint at step {steps[-1]}; pass --resume to "
                    "continue it or choose another directory (nothing was overwritten)")
            return path
        if not steps:
            raise CheckpointError(f"train: --resume needs a checkpoint in checkpoint_dir, got "
                                  f"{path} with no checkpoint")
        if config.resume_step is not None and config.resume_step not in steps:
            raise CheckpointError(
                f"train: resume_step must be one of the steps checkpointed in {path} "
                f"({', '.join(map(str, steps))}), got {config.resume_step}")
        for step in _candidates(steps, config):
            try:
                meta = reader.read_meta(step)
            except CheckpointError:
                raise
            except Exception:  # a damaged step: restore_or_init says so and falls back
                continue
            _check_settings(meta, config, settings, path, step)
            break
    finally:
        reader.close()
    return path


def _candidates(steps: Sequence[int], config: TrainConfig) -> list[int]:
    if config.resume_step is not None:
        return [config.resume_step]
    return sorted(steps, reverse=True)


def restore_or_init(
    config: TrainConfig,
    checkpointer: Checkpointer | None,
    init: Callable[[], dict[str, Any]],
    abstract_state: Any,
    *,
    settings: dict[str, Any],
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    """The state a run starts from: a fresh ``init()``, or with ``config.resume`` the newest
    readable checkpoint (``config.resume_step``: that one).

    A step that cannot be read (damaged files, a killed write) is set aside as
    ``<step>.unreadable`` with one line on stderr naming it and the cause, and the next older
    step is tried. Newer steps than an explicit ``resume_step`` are set aside as
    ``<step>.superseded``, so the resumed run can write its own.

    Args:
      config: the run.
      checkpointer: its checkpoints (None without ``checkpoint_dir``).
      init: builds a fresh state.
      abstract_state: the state's shapes, dtypes and shardings (``jax.ShapeDtypeStruct``).
      settings: the run's values of ``RESUME_KEYS``.
      input_shape: (H, W, C) of the run's images.

    Returns:
      The train state ``{"step", "params", "opt_state", "batch_stats"}``.

    Raises:
      CheckpointError: no step can be read, or the checkpoint is another run's (settings,
        input shape, parameter or optimiser-state layout), in one line.
    """
    if not config.resume or checkpointer is None:
        return init()
    path, want = checkpointer.path, _layout(abstract_state)
    steps = checkpointer.steps()
    unreadable: list[tuple[int, str]] = []
    for step in _candidates(steps, config):
        try:
            meta = checkpointer.read_meta(step)
            _check_settings(meta, config, settings, path, step)
            if tuple(meta["input_shape"]) != tuple(input_shape):
                raise CheckpointError(
                    f"train: --resume checkpoint must be for inputs {tuple(input_shape)}, got "
                    f"{path} (step {step}) for {tuple(meta['input_shape'])}")
            saved = checkpointer.layout(step)
            if saved is not None and saved != want:
                raise CheckpointError(_layout_message(saved, want, meta, config, path, step))
            state = checkpointer.restore(step, abstract_state)
        except CheckpointError:
            raise
        except Exception as err:  # damaged: say so, try the previous step
            unreadable.append((step, _cause(err)))
            if config.resume_step is not None:
                break
            continue
        for bad, why in unreadable:
            name = checkpointer.set_aside(bad, "unreadable")
            _say(f"train: checkpoint step {bad} in {path} is unreadable ({why}); set aside as "
                 f"{name}, resuming from step {step}")
        for newer in [s for s in checkpointer.steps() if s > step]:
            name = checkpointer.set_aside(newer, "superseded")
            _say(f"train: resuming from step {step}: the newer step {newer} in {path} was set "
                 f"aside as {name}")
        return state
    reasons = "; ".join(f"step {s}: {why}" for s, why in unreadable)
    raise CheckpointError(f"train: --resume needs a readable checkpoint, got {path} where "
                          f"{reasons} (nothing was overwritten)")


def _layout_message(saved: dict, want: dict, meta: dict, config: TrainConfig, path: str,
                    step: int) -> str:
    differ = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    part = differ[0].split("/")[0]
    example = differ[0]
    detail = f"{example}: {saved.get(example, 'absent')} saved, {want.get(example, 'absent')} here"
    if part == "opt_state":
        old = (meta.get("config") or {}).get("optimizer")
        return (f"train: --resume checkpoint must hold this run's optimizer state, got {path} "
                f"(step {step}) saved with optimizer {old!r} (this run: {config.optimizer!r}); "
                f"{len(differ)} arrays differ, e.g. {detail}. Optimizer state does not carry "
                "over to another optimizer: start a new run in another --checkpoint-dir")
    return (f"train: --resume checkpoint must hold this model's {part}, got {path} (step "
            f"{step}) where {len(differ)} arrays differ, e.g. {detail}")


# --------------------------------------------------------------------------- metrics


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _strict_json(record: dict[str, Any]) -> str:
    """One record as strict JSON: NaN and infinities become ``null``."""
    return json.dumps(_finite_or_none(record), allow_nan=False)


def _kept_lines(path: str, step: int) -> list[str]:
    """The lines of a metrics file logged up to ``step`` (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path) as fh:
        for line in fh:
            try:
                if json.loads(line).get("step", step + 1) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue
    return kept


def _describe(record: dict[str, Any], total: int) -> str:
    def num(key, fmt):
        v = record.get(key)
        return "null" if v is None or not math.isfinite(v) else format(v, fmt)

    if record.get("split") == "train":
        return (f"step {record['step']}/{total}: loss {num('loss', '.4f')}, accuracy "
                f"{num('accuracy', '.3f')}, lr {num('lr', '.3g')}, "
                f"{1e3 * record['step_time_s']:.1f} ms/step")
    return (f"{record.get('split')} at step {record['step']}: loss {num('loss', '.4f')}, "
            f"accuracy {num('accuracy', '.4f')}, error {num('error', '.4f')} "
            f"({record.get('count')} examples)")


class MetricsWriter:
    """Metric records: kept in ``history``, appended to a JSON-lines file as strict JSON
    (non-finite numbers as ``null``), and echoed as one readable line each.

    Args:
      path: the JSON-lines file, or None. A resumed run keeps its lines up to ``start`` and
        rewrites the rest; a new run starts the file afresh.
      start: the step the run starts from.
      resume: whether the run is resumed.
      total: the run's total steps (for the echoed lines).
      echo: called with each line (default: print to stdout); None silences it.
    """

    def __init__(self, path: str | None, *, start: int = 0, resume: bool = False,
                 total: int = 0, echo: Callable[[str], None] | None = print) -> None:
        self.history: list[dict[str, Any]] = []
        self.total, self._echo, self._fh = total, echo, None
        if jax.process_index() != 0:
            self._echo = None
            return
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            kept = _kept_lines(path, start) if resume else []
            self._fh = open(path, "w")  # noqa: SIM115 (closed by close())
            self._fh.writelines(kept)
            self._fh.flush()

    def write(self, record: dict[str, Any]) -> None:
        """Record one dict of metrics (``step``, ``split`` and numbers)."""
        self.history.append(record)
        if self._fh is not None:
            self._fh.write(_strict_json(record) + "\n")
            self._fh.flush()
        if self._echo is not None:
            self._echo(_describe(record, self.total))

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _train_record(done: int, window: list[dict[str, Any]], seconds: float,
                  config: TrainConfig) -> dict[str, Any]:
    """The record of the steps in ``window`` (ending at ``done``); stops on a bad loss."""
    vals = jax.device_get(window)
    _check_finite(vals, done, config)
    return {"step": done, "split": "train",
            "loss": float(np.mean([v["loss"] for v in vals])),
            "accuracy": float(np.mean([v["accuracy"] for v in vals])),
            "lr": float(vals[-1]["lr"]), "step_time_s": seconds / len(vals)}


def _check_finite(vals: list[dict[str, Any]], done: int, config: TrainConfig) -> None:
    if config.on_nonfinite != "stop":
        return
    for i, v in enumerate(vals):
        loss = float(v["loss"])
        if not math.isfinite(loss):
            step = done - len(vals) + i + 1
            raise NonFiniteLossError(
                f"train: the loss became {loss} at step {step} (lr {float(v['lr']):.3g}); the "
                "run stopped without saving that state. Lower --lr, keep --clip-norm on, or "
                "pass --on-nonfinite continue to keep going")


# --------------------------------------------------------------------------- data


def _num_classes(source: Any) -> int:
    info = getattr(getattr(source, "dataset_info", None), "features", None)
    try:
        return int(info["label"].num_classes)
    except Exception:  # a source without tfds metadata: count the labels
        return int(max(int(source[i]["label"]) for i in range(len(source))) + 1)


def _global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> tuple[jax.Array, ...]:
    """Each process contributes its rows of the global batch (all of them on one host)."""
    p, count = jax.process_index(), jax.process_count()
    out = []
    for key in ("image", "label"):
        rows = batch[key]
        local = len(rows) // count
        out.append(jax.make_array_from_process_local_data(
            sharding, rows[p * local:(p + 1) * local], global_shape=rows.shape))
    return tuple(out)


def _devices(config: TrainConfig) -> list[jax.Device]:
    available = jax.devices()
    n = len(available) if config.devices is None else config.devices
    if n > len(available):
        raise fail("train", "devices", f"at most the {len(available)} device(s) JAX sees", n)
    if jax.process_count() > 1 and n != len(available):
        raise fail("train", "devices", "all devices in a multi-host run", n)
    if config.batch_size % n:
        raise fail("train", "batch_size", f"divisible by the device count {n} (each device "
                   "takes an equal share of the global batch)", config.batch_size)
    return list(available[:n])


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: Any,
    variables: dict[str, Any] | None,
    loader: Loader,
    *,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Mean loss, accuracy and error of a model over every example of a loader.

    Args:
      model: a linen module ``model.apply(variables, x (N, H, W, C), train=False)`` -> logits,
        an nnx module ``model(x)`` (evaluated in eval mode), or a ``Classifier``.
      variables: ``{"params", "batch_stats"}``; None for an nnx module's own.
      loader: a ``Loader`` (one epoch is evaluated; a last partial batch is padded and masked).
      mesh: device mesh with axis ``"data"`` (default: all devices).

    Returns:
      ``{"loss", "accuracy", "error", "count"}`` (floats; error = 1 - accuracy).
    """
    if variables is None:
        from flax import nnx

        if not isinstance(model, nnx.Module):
            raise fail("evaluate", "variables", "given for a linen module", None)
        _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
    classifier = model if isinstance(model, Classifier) else as_classifier(model)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), ("data",))
    n_dev = mesh.devices.size
    data_sh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    size = -(-loader.batch_size // n_dev) * n_dev

    @jax.jit
    def step(variables, x, y, mask):
        logits, _ = classifier.apply(variables, x, train=False, rng=jax.random.PRNGKey(0))
        loss = _cross_entropy(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.sum(loss * mask), jnp.sum(correct * mask)

    variables = jax.device_put(variables, repl)
    tot_loss = tot_correct = 0.0
    count = 0
    for i in range(len(loader)):
        batch = loader.batch(i)
        b = len(batch["label"])
        pad = size - b
        x = np.concatenate([batch["image"], np.zeros((pad, *batch["image"].shape[1:]),
                                                     np.float32)])
        y = np.concatenate([batch["label"], np.zeros((pad,), np.int32)])
        mask = np.concatenate([np.ones((b,), np.float32), np.zeros((pad,), np.float32)])
        args = [jax.device_put(a, data_sh) for a in (x, y, mask)]
        loss, correct = step(variables, *args)
        tot_loss += float(loss)
        tot_correct += float(correct)
        count += b
    acc = tot_correct / count
    return {"loss": tot_loss / count, "accuracy": acc, "error": 1.0 - acc, "count": count}


# --------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    *,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; checkpoint, resume, log, evaluate.

    Args:
      config: the run (see ``TrainConfig``).
      callback: called as ``callback(step, metrics)`` after every step (``step`` counts
        completed steps); an exception it raises stops the run (checkpoints already written
        are kept, so the run can be resumed).
      model_overrides: extra fields for ``create_model`` (e.g. ``{"small_stem": False}``).

    Returns:
      A ``TrainResult`` with the final variables and the metric history; inputs are
      (N, H, W, C) images, the model outputs logits (N, num_classes).

    Raises:
      ValueError: unknown model, attention, dataset, optimiser or schedule name (the message
        lists the known ones), batch size not divisible by the device count, an unusable
        checkpoint directory or metrics path, or a checkpoint of another run
        (``CheckpointError``). Checked before the first step.
      NonFiniteLossError: the loss became NaN or infinite (``on_nonfinite="stop"``).
    """
    overrides = dict(model_overrides or {})
    check_choice("train", "model", config.model, list_models())
    devices = _devices(config)
    settings = _run_settings(config, len(devices), overrides)
    if config.metrics_file:
        _check_writable("metrics_file", os.path.abspath(config.metrics_file), directory=False)
    ckpt_path = _check_checkpoint_dir(config, settings)
    source = load(config.dataset, split="train", data_dir=config.data_dir,
                  download=config.download)
    loader = Loader(source, batch_size=config.batch_size, seed=config.seed, shuffle=True,
                    drop_remainder=True, distortion=config.distort)
    first = loader.batch(0)
    input_shape, num_classes = tuple(first["image"].shape[1:]), _num_classes(source)
    classifier = _build_classifier(config, num_classes, input_shape, overrides)
    mesh = Mesh(np.array(devices), ("data",))
    repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    tx, schedule = make_optimizer(config)
    init_key, key = jax.random.split(jax.random.PRNGKey(config.seed))

    def init() -> dict[str, Any]:
        return init_state(classifier, tx, init_key, input_shape, sharding=repl)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                            jax.eval_shape(init))
    ckpt = Checkpointer(ckpt_path) if ckpt_path else None
    try:
        state = restore_or_init(config, ckpt, init, abstract, settings=settings,
                                input_shape=input_shape)
        step_fn = jax.jit(make_train_step(classifier, tx, schedule, key), donate_argnums=(0,),
                          in_shardings=(repl, data_sh, data_sh), out_shardings=(repl, repl))
        t0 = time.perf_counter()
        step_fn = step_fn.lower(state, *_global_batch(first, data_sh)).compile()
        compile_time, start = time.perf_counter() - t0, int(state["step"])
        meta = _meta(config, num_classes=num_classes, input_shape=input_shape,
                     devices=len(devices), overrides=overrides)
        batches = (lambda s: _global_batch(first if s == 0 else loader.batch(s), data_sh))
        writer = MetricsWriter(config.metrics_file, start=start, resume=config.resume,
                               total=config.steps, echo=_echo())
        try:
            state, loop_time = _loop(config, state, step_fn, batches, ckpt, meta, writer,
                                     callback)
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            result_eval = None
            if config.eval:
                result_eval = _evaluate_split(config, classifier, variables, mesh)
                writer.write({"step": int(state["step"]), "split": "test", **result_eval})
        finally:
            writer.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    host = jax.device_get(state)
    variables = {"params": host["params"], "batch_stats": host["batch_stats"]}
    return TrainResult(
        model=classifier.bind(variables), variables=variables, step=int(host["step"]),
        history=writer.history, eval=result_eval,
        num_params=int(sum(np.size(p) for p in jax.tree.leaves(host["params"]))),
        compile_time_s=compile_time, step_time_s=loop_time / max(config.steps - start, 1),
        input_shape=input_shape, state=host)


def _echo() -> Callable[[str], None]:
    from tqdm.auto import tqdm

    return lambda line: tqdm.write(line)  # stdout, above a progress bar if one is shown


def _loop(config: TrainConfig, state: dict[str, Any], step_fn: Callable[..., Any],
          batches: Callable[[int], tuple[jax.Array, jax.Array]], ckpt: Checkpointer | None,
          meta: dict[str, Any], writer: MetricsWriter,
          callback: Callable[[int, dict[str, Any]], None] | None) -> tuple[dict, float]:
    """Steps ``state["step"]`` up to ``config.steps``: log, checkpoint, call back.

    Returns:
      The final state and the seconds spent in the loop.
    """
    from tqdm.auto import tqdm

    start = int(state["step"])
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress,
               desc=config.model + (f"+{config.attention}" if config.attention else ""),
               dynamic_ncols=True)
    window: list[dict[str, jax.Array]] = []
    loop_time, t_window = 0.0, time.perf_counter()
    try:
        for step in range(start, config.steps):
            state, metrics = step_fn(state, *batches(step))
            window.append(metrics)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                seconds = time.perf_counter() - t_window
                loop_time += seconds
                record = _train_record(done, window, seconds, config)
                writer.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
                window, t_window = [], time.perf_counter()
            if ckpt is not None and (done % config.checkpoint_every == 0
                                     or done == config.steps):
                _check_finite(jax.device_get(window), done, config)  # never save a NaN state
                ckpt.save(done, state, meta)
            bar.update(1)
            if callback is not None:
                callback(done, dict(metrics))
    finally:
        bar.close()
    return state, loop_time


def _evaluate_split(config: TrainConfig, classifier: Classifier, variables: dict[str, Any],
                    mesh: Mesh) -> dict[str, float]:
    eval_src = load(config.dataset, split="test", data_dir=config.data_dir,
                    download=config.download)
    eval_loader = Loader(eval_src, batch_size=config.eval_batch_size, seed=0, shuffle=False,
                         drop_remainder=False, distortion=config.distort)
    return evaluate(classifier, variables, eval_loader, mesh=mesh)
