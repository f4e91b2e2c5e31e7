"""The settings of a training run (``TrainConfig``) and the optimiser they define."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from attention_jax._validation import check_choice, check_positive_int, fail
from attention_jax.compiler import CONVOLUTION_RUNTIMES

__all__ = ["TrainConfig", "make_optimizer", "RESUME_KEYS", "OPTIMIZERS", "SCHEDULES", "APIS",
           "ON_NONFINITE"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
APIS = ("linen", "nnx")
ON_NONFINITE = ("stop", "continue")

RESUME_KEYS = ("model", "api", "attention", "model_overrides", "dataset", "distort", "seed",
               "steps", "batch_size", "devices", "optimizer", "lr", "schedule", "momentum",
               "weight_decay", "clip_norm", "init_from", "freeze_backbone")
"""Settings a resumed run must share with its checkpoint (they change the arithmetic)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags map one to one).

    Checked when built: a ``ValueError`` names the field, what it must be and what it got.

    Attributes:
      dataset: ``"digits/<variant>"`` or a prepared tfds image dataset name.
      model: a name ``attention_jax.models.create_model`` knows (``"cnn"``, ``"stcnn"``,
        ``"resnet"``, or a timm name such as ``"seresnet50"``).
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
      init_from: start from the weights in this file (None: a random initialisation): a
        timm state dict (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) of a timm zoo name or
        an attention-jax variables file (``attention-jax convert``). The model is built for
        the dataset; a head of another width is replaced by a fresh one and a stem kernel for
        other input channels is adapted (see ``attention_jax.train.finetune``); everything
        else must match. Read only when the run starts: a resume continues from its
        checkpoint and never reads the file again.
      freeze_backbone: train only the classifier head (needs ``init_from``); every other
        parameter and the BatchNorm statistics stay the file's (the model runs in eval mode
        during training: BatchNorm uses the running statistics, dropout is off).
      cpu_convolutions: the runtime of XLA:CPU's convolutions in the train and evaluation
        steps (``attention_jax.cpu_compiler_options``): ``"eigen"`` (default: XLA's own
        convolution runtime; training steps of skresnet34 and resnest50d at batch 32 ran
        1.2-1.6x as many images per second as with XLA's default on the AMD EPYC Zen 4 and the
        Intel Xeon, see the README) or ``"ynnpack"`` (what XLA picks by itself: YNNPACK's
        convolutions, faster at batch 1). Only the CPU; it changes float rounding, not the
        computation, so a resume may change it.
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
    init_from: str | None = None
    freeze_backbone: bool = False
    cpu_convolutions: str = "eigen"

    def __post_init__(self) -> None:
        fn = "train"
        for name in ("dataset", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise fail(fn, name, "a non-empty string", repr(getattr(self, name)))
        check_choice(fn, "api", self.api, APIS)
        check_choice(fn, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(fn, "schedule", self.schedule, SCHEDULES)
        check_choice(fn, "on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        check_choice(fn, "cpu_convolutions", self.cpu_convolutions, CONVOLUTION_RUNTIMES)
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
        for name in ("resume", "download", "eval", "progress", "freeze_backbone"):
            if not isinstance(getattr(self, name), bool):
                raise fail(fn, name, "True or False", repr(getattr(self, name)))
        for name in ("checkpoint_dir", "metrics_file", "data_dir", "init_from"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                    raise fail(fn, name, "None or a path", repr(value))
                setattr(self, name, os.fspath(value))
        if self.resume and not self.checkpoint_dir:
            raise fail(fn, "checkpoint_dir", "given with resume", None)
        if self.freeze_backbone and self.init_from is None:
            raise fail(fn, "freeze_backbone", "used with init_from (a frozen backbone of random "
                       "weights learns nothing)", True)
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
