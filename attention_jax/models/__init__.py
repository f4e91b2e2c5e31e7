"""attention_jax.models: ResNet backbones (timm's attention ResNets by name), small classifiers.

``create_model(name, api="linen"|"nnx")`` builds any name of ``list_models()``;
``pretrained_config(name)`` and ``preprocess(images, name)`` give and apply timm's evaluation
configuration. The linen models are at this level; the nnx twins (same names) in
``models.resnet_nnx`` and ``models.cnn_nnx``; the API-neutral plans and forwards in
``models.resnet_core`` and ``models.classifier_core``.
"""

from attention_jax.models import cnn_nnx, resnet_core, resnet_nnx
from attention_jax.models.cnn import *  # noqa: F403
from attention_jax.models.cnn import __all__ as _cnn_all
from attention_jax.models.preprocess import preprocess
from attention_jax.models.resnet import *  # noqa: F403
from attention_jax.models.resnet import __all__ as _resnet_all
from attention_jax.models.zoo import *  # noqa: F403
from attention_jax.models.zoo import __all__ as _zoo_all

__all__ = [*_resnet_all, "resnet_core", "resnet_nnx", *_cnn_all, "cnn_nnx", *_zoo_all,
           "preprocess"]
