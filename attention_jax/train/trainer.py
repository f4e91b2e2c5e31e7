"""The training loop: optax, a jit-compiled step, data parallelism, orbax checkpoints, resume.

Data parallelism: the global batch is sharded over a 1-D ``jax.sharding.Mesh`` of devices
(axis ``"data"``), parameters and optimiser state are replicated, and ``jit`` inserts the
gradient all-reduce. The maths is that of one device with the whole batch, so the loss curve on
1 and N devices agrees up to float summation order.

Multi-host: call ``jax.distributed.initialize()`` (coordinator address, process count and id,
or auto-detected on TPU/SLURM) before ``train``; ``jax.devices()`` then spans every host, each
process loads only its rows of each global batch (``Loader`` is a pure function of seed and
step, so the processes agree on the order) and ``jax.make_array_from_process_local_data``
assembles the global array. ``checkpoint_dir`` must then be on storage every host sees.

Resume: a checkpoint holds the step, parameters, optimiser state and batch statistics; the data
order and every random key derive from ``(seed, step)``, so a run stopped after a checkpoint
and resumed ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attention_jax._validation import check_choice, check_positive_int, fail
from attention_jax.data.loader import Loader, load
from attention_jax.train.models import create_model

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "make_optimizer", "CheckpointError"]

_FORMAT = "attention-jax-train/1"
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used (empty for --resume, another model, or taken)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags map one to one).

    ``steps`` is the total number of optimiser steps of the run (a resumed run continues up to
    it); ``batch_size`` is the global batch, split evenly over ``devices``.
    """

    dataset: str = "digits/RTS"
    model: str = "cnn"
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
    metrics_file: str | None = None
    log_every: int = 50
    eval_batch_size: int = 256
    eval: bool = True
    progress: bool = True


@dataclasses.dataclass
class TrainResult:
    """What a run returns: final variables, metric history, evaluation and timings."""

    model: Any
    variables: dict[str, Any]
    step: int
    history: list[dict[str, Any]]
    eval: dict[str, float] | None
    num_params: int
    compile_time_s: float
    step_time_s: float
    input_shape: tuple[int, ...]


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


def _validate(config: TrainConfig) -> list[jax.Device]:
    from attention_jax.registry import list_attention
    from attention_jax.train.models import list_models

    check_choice("train", "model", config.model, list_models())
    if config.attention is not None:
        check_choice("train", "attention", config.attention, list_attention())
    check_choice("train", "optimizer", config.optimizer, OPTIMIZERS)
    check_choice("train", "schedule", config.schedule, SCHEDULES)
    check_positive_int("train", "steps", config.steps)
    check_positive_int("train", "batch_size", config.batch_size)
    check_positive_int("train", "log_every", config.log_every)
    check_positive_int("train", "checkpoint_every", config.checkpoint_every)
    check_positive_int("train", "eval_batch_size", config.eval_batch_size)
    if config.distort is not None:
        from attention_jax.data.transforms import VARIANTS

        check_choice("train", "distort", config.distort, VARIANTS)
    available = jax.devices()
    n = len(available) if config.devices is None else config.devices
    check_positive_int("train", "devices", n)
    if n > len(available):
        raise fail("train", "devices", f"at most the {len(available)} device(s) JAX sees", n)
    if jax.process_count() > 1 and n != len(available):
        raise fail("train", "devices", "all devices in a multi-host run", n)
    if config.batch_size % n:
        raise fail("train", "batch_size", f"divisible by the device count {n} (each device "
                   "takes an equal share of the global batch)", config.batch_size)
    if config.resume and not config.checkpoint_dir:
        raise fail("train", "checkpoint_dir", "given with resume", None)
    if config.clip_norm is not None and not (isinstance(config.clip_norm, (int, float))
                                             and math.isfinite(config.clip_norm)
                                             and config.clip_norm > 0):
        raise fail("train", "clip_norm", "None or a positive number", config.clip_norm)
    return list(available[:n])


def _meta(config: TrainConfig, num_classes: int, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"format": _FORMAT, "model": config.model, "attention": config.attention,
            "dataset": config.dataset, "distort": config.distort, "num_classes": num_classes,
            "input_shape": list(input_shape), "config": dataclasses.asdict(config)}


def _manager(path: str, *, create: bool, keep: int = 2):
    import orbax.checkpoint as ocp

    # Synchronous saves: the train step donates the state's buffers right after a save.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


def _check_checkpoint_dir(config: TrainConfig) -> tuple[str | None, dict[str, Any] | None]:
    """Before anything is written: the latest checkpoint's meta (resume) or an unused dir."""
    if not config.checkpoint_dir:
        return None, None
    import orbax.checkpoint as ocp

    path = os.path.abspath(config.checkpoint_dir)
    exists = os.path.isdir(path)
    latest = _manager(path, create=False).latest_step() if exists else None
    if not config.resume:
        if latest is not None:
            raise CheckpointError(
                f"train: checkpoint_dir must be empty or new (without --resume), got {path} "
                f"holding a checkpoint at step {latest}; pass --resume to continue it or choose "
                "another directory (nothing was overwritten)")
        return path, None
    if latest is None:
        raise CheckpointError(f"train: --resume needs a checkpoint in checkpoint_dir, got {path} "
                              f"{'with no checkpoint' if exists else 'which does not exist'}")
    try:
        meta = _manager(path, create=False).restore(
            latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # a foreign or damaged checkpoint
        raise CheckpointError(f"train: checkpoint_dir must hold an attention-jax training "
                              f"checkpoint, got {path} (step {latest}): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"train: checkpoint_dir must hold an attention-jax training "
                              f"checkpoint, got {path} with metadata {meta!r}")
    for key in ("model", "attention", "dataset", "distort"):
        if meta.get(key) != getattr(config, key):
            raise CheckpointError(
                f"train: --resume checkpoint must be of the same {key}, got {path} holding "
                f"{key}={meta.get(key)!r} while this run asks for {getattr(config, key)!r} "
                "(nothing was overwritten)")
    return path, meta


def _num_classes(source: Any) -> int:
    info = getattr(getattr(source, "dataset_info", None), "features", None)
    try:
        return int(info["label"].num_classes)
    except Exception:  # a source without tfds metadata: count the labels
        return int(max(int(source[i]["label"]) for i in range(len(source))) + 1)


def _metrics_before(path: str, step: int) -> list[str]:
    """The lines of a metrics file logged up to ``step`` (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path) as fh:
        for line in fh:
            try:
                if json.loads(line).get("step", step + 1) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
    return kept


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def evaluate(
    model: Any,
    variables: dict[str, Any],
    loader: Loader,
    *,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Mean loss, accuracy and error of a model over every example of a loader.

    Args:
      model: a linen module ``model.apply(variables, x (N, H, W, C), train=False)`` -> logits.
      variables: its variables.
      loader: a ``Loader`` (one epoch is evaluated; a last partial batch is padded and masked).
      mesh: device mesh with axis ``"data"`` (default: all devices).

    Returns:
      ``{"loss", "accuracy", "error", "count"}`` (floats; error = 1 - accuracy).
    """
    mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), ("data",))
    n_dev = mesh.devices.size
    data_sh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    size = -(-loader.batch_size // n_dev) * n_dev

    @jax.jit
    def step(variables, x, y, mask):
        logits = model.apply(variables, x, train=False)
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
        lists the known ones), batch size not divisible by the device count, or a checkpoint
        directory that cannot be used (``CheckpointError``). Checked before anything is
        written.
    """
    devices = _validate(config)
    ckpt_path, meta = _check_checkpoint_dir(config)

    train_src = load(config.dataset, split="train", data_dir=config.data_dir,
                     download=config.download)
    num_classes = _num_classes(train_src)
    loader = Loader(train_src, batch_size=config.batch_size, seed=config.seed, shuffle=True,
                    drop_remainder=True, distortion=config.distort)
    first = loader.batch(0)
    input_shape = tuple(first["image"].shape[1:])
    if meta is not None and tuple(meta["input_shape"]) != input_shape:
        raise CheckpointError(f"train: --resume checkpoint must be for inputs {input_shape}, "
                              f"got {ckpt_path} for {tuple(meta['input_shape'])}")

    model = create_model(config.model, num_classes=num_classes, in_channels=input_shape[-1],
                         attention=config.attention, **(model_overrides or {}))
    init_key, key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    variables = jax.tree.map(jnp.asarray, dict(variables))
    params = variables.pop("params")
    batch_stats = variables.pop("batch_stats", {})
    if variables:
        raise fail("train", "model", "a model whose variables are params and batch_stats",
                   sorted(variables))
    has_bs = bool(batch_stats)
    tx, schedule = make_optimizer(config)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": tx.init(params), "batch_stats": batch_stats}

    mesh = Mesh(np.array(devices), ("data",))
    repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = jax.device_put(state, repl)

    manager = None
    if ckpt_path is not None:
        import orbax.checkpoint as ocp

        manager = _manager(ckpt_path, create=True)
        if config.resume:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            try:
                restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception as err:
                manager.close()
                raise CheckpointError(
                    f"train: --resume checkpoint must match the model's parameters, got "
                    f"{ckpt_path}: {err}") from err
            state = jax.device_put(restored, repl)
        meta_out = _meta(config, num_classes, input_shape)

    def train_step(state, images, labels):
        step = state["step"]
        rng = jax.random.fold_in(key, step)

        def loss_fn(params):
            variables = {"params": params}
            if has_bs:
                variables["batch_stats"] = state["batch_stats"]
                logits, updates = model.apply(variables, images, train=True,
                                              mutable=["batch_stats"], rngs={"dropout": rng})
            else:
                logits = model.apply(variables, images, train=True, rngs={"dropout": rng})
                updates = {}
            return _cross_entropy(logits, labels).mean(), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        upd, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": step + 1, "params": optax.apply_updates(state["params"], upd),
                     "opt_state": opt_state,
                     "batch_stats": updates.get("batch_stats", state["batch_stats"])}
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": accuracy, "lr": schedule(step)}

    jitted = jax.jit(train_step, in_shardings=(repl, data_sh, data_sh),
                     out_shardings=(repl, repl), donate_argnums=(0,))
    x0, y0 = _global_batch(first, data_sh)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, x0, y0).compile()
    compile_time = time.perf_counter() - t0

    start = int(state["step"])
    history: list[dict[str, Any]] = []
    metrics_fh = None
    if config.metrics_file:
        os.makedirs(os.path.dirname(os.path.abspath(config.metrics_file)), exist_ok=True)
        kept = _metrics_before(config.metrics_file, start) if config.resume else []
        metrics_fh = open(config.metrics_file, "w")  # noqa: SIM115
        metrics_fh.writelines(kept)

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if metrics_fh is not None:
            metrics_fh.write(json.dumps(record) + "\n")
            metrics_fh.flush()

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=not config.progress,
               desc=f"{config.model}{'+' + config.attention if config.attention else ''}",
               dynamic_ncols=True)
    window: list[dict[str, jax.Array]] = []
    loop_time = 0.0
    steps_run = 0
    try:
        t_window = time.perf_counter()
        for step in range(start, config.steps):
            batch = first if step == 0 else loader.batch(step)
            x, y = _global_batch(batch, data_sh)
            state, metrics = compiled(state, x, y)
            window.append(metrics)
            done = step + 1
            steps_run += 1
            if done % config.log_every == 0 or done == config.steps:
                vals = jax.device_get(window)
                now = time.perf_counter()
                loop_time += now - t_window
                record = {"step": done, "split": "train",
                          "loss": float(np.mean([v["loss"] for v in vals])),
                          "accuracy": float(np.mean([v["accuracy"] for v in vals])),
                          "lr": float(vals[-1]["lr"]),
                          "step_time_s": (now - t_window) / len(vals)}
                log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
                window = []
                t_window = time.perf_counter()
            if manager is not None and (done % config.checkpoint_every == 0
                                        or done == config.steps):
                import orbax.checkpoint as ocp

                manager.save(done, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta_out)))
            bar.update(1)
            if callback is not None:
                callback(done, {k: v for k, v in metrics.items()})
    finally:
        bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        if metrics_fh is not None and not config.eval:
            metrics_fh.close()

    final_vars = {"params": state["params"]}
    if has_bs:
        final_vars["batch_stats"] = state["batch_stats"]
    result_eval = None
    try:
        if config.eval:
            eval_src = load(config.dataset, split="test", data_dir=config.data_dir,
                            download=config.download)
            eval_loader = Loader(eval_src, batch_size=config.eval_batch_size, seed=0,
                                 shuffle=False, drop_remainder=False, distortion=config.distort)
            result_eval = evaluate(model, final_vars, eval_loader, mesh=mesh)
            log({"step": int(state["step"]), "split": "test", **result_eval})
    finally:
        if metrics_fh is not None:
            metrics_fh.close()
    num_params = int(sum(np.size(p) for p in jax.tree.leaves(state["params"])))
    return TrainResult(
        model=model, variables=jax.device_get(final_vars), step=int(state["step"]),
        history=history, eval=result_eval, num_params=num_params,
        compile_time_s=compile_time, step_time_s=loop_time / max(steps_run, 1),
        input_shape=input_shape)
