"""Training: optax optimisers and schedules, a jit-compiled data-parallel step for linen and nnx
models, orbax checkpoints with exact resume, strict JSON-lines metrics (``attention-jax train``).

The pieces live in ``config`` (``TrainConfig``, ``make_optimizer``), ``classifier``
(``as_classifier``, ``init_state``, ``make_train_step``), ``checkpoint`` (``Checkpointer``,
``restore_or_init``), ``metrics`` (``MetricsWriter``), ``finetune`` (``init_from`` and
``freeze_backbone``: pretrained weights in, head replaced, backbone frozen) and ``trainer``
(``train``, ``evaluate``)."""

from attention_jax.models.zoo import create_model, list_models
from attention_jax.train.trainer import *  # noqa: F403
from attention_jax.train.trainer import __all__ as _trainer_all

# create_model / list_models are the zoo's (attention_jax.models), re-exported: the trainer
# builds any of its names.
__all__ = ["create_model", "list_models", *_trainer_all]
