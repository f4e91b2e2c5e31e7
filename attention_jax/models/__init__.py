"""attention_jax.models"""

from attention_jax.models import resnet_nnx
from attention_jax.models.cnn import *  # noqa: F403
from attention_jax.models.cnn import __all__ as _cnn_all
from attention_jax.models.resnet import *  # noqa: F403
from attention_jax.models.resnet import __all__ as _resnet_all

# linen ResNets at this level; the nnx twins (same names) in ``models.resnet_nnx``.
__all__ = [*_resnet_all, "resnet_nnx", *_cnn_all]
