"""Training: optax optimisers and schedules, a jit-compiled data-parallel step, orbax
checkpoints with exact resume, JSON-lines metrics (``attention-jax train``)."""

from attention_jax.train.models import *  # noqa: F403
from attention_jax.train.models import __all__ as _models_all
from attention_jax.train.trainer import *  # noqa: F403
from attention_jax.train.trainer import __all__ as _trainer_all

__all__ = [*_models_all, *_trainer_all]
