"""The training loop: optax, a jit-compiled step, data parallelism, orbax checkpoints, resume.

The pieces, each usable alone (big_vision's trainers have the same shape):

- ``config.TrainConfig``: the run, validated when built (bad numbers are a ``ValueError``);
  ``make_optimizer``: its optax optimiser and schedule.
- ``classifier.as_classifier``: a linen module, or an nnx model's constructor, as two pure
  functions (``init``, ``apply``) over plain dicts of parameters and batch statistics, so the
  rest of the trainer does not know the Flax API. nnx models are split into graphdef and state
  and trained functionally; their checkpoints have the linen layout.
  ``classifier.init_state``: the train state ``{"step", "params", "opt_state",
  "batch_stats"}`` of a seed, built by one jitted call; ``classifier.make_train_step``: the
  pure step ``(state, images, labels) -> (state, metrics)``.
- ``checkpoint.Checkpointer`` and ``checkpoint.restore_or_init``: orbax checkpoints of the
  state and the run's settings; the newest readable step is restored (a damaged newer one is
  set aside, saying so), and a resume whose settings differ from the checkpoint's is refused.
- ``metrics.MetricsWriter``: metric records as strict JSON lines (non-finite numbers are
  ``null``) and one line each on stdout.
- ``train`` (here): joins them around ``_loop``; ``evaluate``: loss and accuracy over a
  loader.

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

Fine-tuning (``finetune``): ``init_from`` starts the run from a timm state dict or an
attention-jax variables file instead of a random initialisation (a head of another width is
replaced by the run's fresh one, a stem for other input channels adapted, the rest loaded
strictly, BatchNorm statistics included); ``freeze_backbone`` trains the head alone, with the
model in eval mode so the frozen BatchNorm statistics stay the file's. A resume continues from
its checkpoint and never reads the file again.

Non-finite losses: by default the run stops with ``NonFiniteLossError`` at the first logged or
checkpointed window holding a non-finite loss, before saving that state (``on_nonfinite=
"continue"`` keeps going). Metric files stay strict JSON either way: non-finite values are
written as ``null``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attention_jax._validation import check_choice, fail
from attention_jax.compiler import cpu_compiler_options
from attention_jax.data.loader import Loader, load

# The one place the trainer takes its model factory from.
from attention_jax.models.zoo import create_model, list_models
from attention_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    check_checkpoint_dir,
    check_writable,
    restore_or_init,
    run_meta,
    run_settings,
)
from attention_jax.train.classifier import (
    Classifier,
    as_classifier,
    cross_entropy,
    init_state,
    make_train_step,
)
from attention_jax.train.config import RESUME_KEYS, TrainConfig, make_optimizer
from attention_jax.train.finetune import (
    InitFrom,
    apply_init_from,
    check_init_from,
    freeze_backbone,
    model_parts,
    read_init_from,
    say_init_from,
)
from attention_jax.train.metrics import (
    MetricsWriter,
    NonFiniteLossError,
    check_finite,
    train_record,
)

__all__ = [
    "TrainConfig", "TrainResult", "train", "evaluate", "make_optimizer", "CheckpointError",
    "NonFiniteLossError", "Classifier", "as_classifier", "init_state", "make_train_step",
    "Checkpointer", "restore_or_init", "MetricsWriter", "RESUME_KEYS",
]


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


def _build_classifier(config: TrainConfig, num_classes: int, input_shape: tuple[int, ...],
                      overrides: dict[str, Any]) -> Classifier:
    kwargs = dict(num_classes=num_classes, in_channels=input_shape[-1], **overrides)
    if config.attention is not None:  # None keeps the name's own (seresnet50's "se")
        kwargs["attention"] = config.attention
    if config.api == "nnx" and config.model in ("cnn", "stcnn"):
        kwargs.setdefault("in_size", tuple(input_shape[:2]))  # nnx declares its dense layers
    if config.api == "linen":
        return as_classifier(create_model(config.model, api="linen", **kwargs))
    # as_classifier builds it once abstractly (nnx.eval_shape): bad options fail here.
    return as_classifier(lambda rngs: create_model(config.model, api="nnx", rngs=rngs, **kwargs))


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
    compiler_options: dict[str, str] | None = None,
) -> dict[str, float]:
    """Mean loss, accuracy and error of a model over every example of a loader.

    Args:
      model: a linen module ``model.apply(variables, x (N, H, W, C), train=False)`` -> logits,
        an nnx module ``model(x)`` (evaluated in eval mode), or a ``Classifier``.
      variables: ``{"params", "batch_stats"}``; None for an nnx module's own.
      loader: a ``Loader`` (one epoch is evaluated; a last partial batch is padded and masked).
      mesh: device mesh with axis ``"data"`` (default: all devices).
      compiler_options: the evaluation step's ``jax.jit`` compiler options (e.g.
        ``attention_jax.cpu_compiler_options("eigen")``); default: none.

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

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def step(variables, x, y, mask):
        logits, _ = classifier.apply(variables, x, train=False, rng=jax.random.PRNGKey(0))
        loss = cross_entropy(logits, y)
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
        checkpoint directory or metrics path, a checkpoint of another run
        (``CheckpointError``), or an ``init_from`` file that is missing or does not fit the
        model (the keys and shapes). Checked before the first step.
      NonFiniteLossError: the loss became NaN or infinite (``on_nonfinite="stop"``).
    """
    overrides = dict(model_overrides or {})
    check_choice("train", "model", config.model, list_models())
    devices = _devices(config)
    settings = run_settings(config, len(devices), overrides)
    if config.metrics_file:
        check_writable("metrics_file", os.path.abspath(config.metrics_file), directory=False)
    ckpt_path = check_checkpoint_dir(config, settings)
    if config.init_from is not None and not config.resume:
        check_init_from(config.init_from)  # now, not after loading data and building the model
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
    start_from: InitFrom | None = None
    if config.init_from is not None or config.freeze_backbone:
        tx, start_from = _fine_tuning(config, classifier, tx, init_key, num_classes,
                                      input_shape, overrides)

    def fresh() -> dict[str, Any]:
        return init_state(classifier, tx, init_key, input_shape, sharding=repl)

    def init() -> dict[str, Any]:
        state = fresh()
        if start_from is None:
            return state
        variables = jax.device_put(apply_init_from(state, start_from), repl)
        opt_state = jax.jit(tx.init, out_shardings=repl)(variables["params"])
        return {**state, **variables, "opt_state": opt_state}

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                            jax.eval_shape(fresh))
    ckpt = Checkpointer(ckpt_path) if ckpt_path else None
    try:
        state = restore_or_init(config, ckpt, init, abstract, settings=settings,
                                input_shape=input_shape)
        options = cpu_compiler_options(config.cpu_convolutions)
        step_fn = jax.jit(make_train_step(classifier, tx, schedule, key,
                                          train_mode=not config.freeze_backbone),
                          donate_argnums=(0,), in_shardings=(repl, data_sh, data_sh),
                          out_shardings=(repl, repl), compiler_options=options)
        t0 = time.perf_counter()
        step_fn = step_fn.lower(state, *_global_batch(first, data_sh)).compile()
        compile_time, start = time.perf_counter() - t0, int(state["step"])
        meta = run_meta(config, num_classes=num_classes, input_shape=input_shape,
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


def _fine_tuning(config: TrainConfig, classifier: Classifier, tx: Any, init_key: jax.Array,
                 num_classes: int, input_shape: tuple[int, ...],
                 overrides: dict[str, Any]) -> tuple[Any, InitFrom | None]:
    """``init_from`` and ``freeze_backbone``: the optimiser (head only when frozen) and what
    the file gives (read and matched now, before anything is written; None on a resume, which
    continues from its checkpoint and never reads the file)."""

    built: dict[tuple, dict[str, Any]] = {}

    def abstract_of(k: int, shape: tuple[int, ...]) -> dict[str, Any]:
        if (k, shape) not in built:
            c = (classifier if (k, shape) == (num_classes, input_shape)
                 else _build_classifier(config, k, shape, overrides))
            built[k, shape] = jax.eval_shape(lambda key: c.init(key, shape), init_key)
        return built[k, shape]

    parts = model_parts(abstract_of, num_classes, input_shape)
    if config.freeze_backbone:
        tx = freeze_backbone(tx, parts)
    if config.init_from is None or config.resume:
        return tx, None
    arch = dict(overrides)
    if config.attention is not None:
        arch["attention"] = config.attention
    start_from = read_init_from(config.init_from, model=config.model,
                                abstract=abstract_of(num_classes, input_shape), parts=parts,
                                overrides=arch)
    say_init_from(start_from)
    return tx, start_from


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
                record = train_record(done, window, seconds)
                writer.write(record)
                check_finite(window, done, config)  # after logging it, stop on a NaN loss
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
                window, t_window = [], time.perf_counter()
            if ckpt is not None and (done % config.checkpoint_every == 0
                                     or done == config.steps):
                check_finite(window, done, config)  # never save a NaN state
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
    return evaluate(classifier, variables, eval_loader, mesh=mesh,
                    compiler_options=cpu_compiler_options(config.cpu_convolutions))
