"""attention_jax.models"""

from attention_jax.models import cnn_nnx, resnet_nnx
from attention_jax.models.cnn import *  # noqa: F403
from attention_jax.models.cnn import __all__ as _cnn_all
from attention_jax.models.resnet import *  # noqa: F403
from attention_jax.models.resnet import __all__ as _resnet_all

# linen models at this level; the nnx twins (same names) in ``models.resnet_nnx`` and
# ``models.cnn_nnx``.
__all__ = [*_resnet_all, "resnet_nnx", *_cnn_all, "cnn_nnx"]
