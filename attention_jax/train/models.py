"""The models ``attention-jax train`` knows by name."""

from __future__ import annotations

from typing import Any

from attention_jax._validation import check_choice, fail

__all__ = ["create_model", "list_models"]

# name -> (what it is, whether it takes attention=<registry name>)
_MODELS: dict[str, tuple[str, bool]] = {
    "cnn": ("CNN baseline (attention_jax.models.CNN)", False),
    "stcnn": ("spatial transformer + the same CNN (attention_jax.models.STCNN)", False),
    "resnet": ("tiny ResNet-style backbone taking attention=<name> (attention_jax.models."
               "ResNet, layout 'resnet_tiny')", True),
}


def list_models() -> list[str]:
    """The model names accepted by ``create_model`` and ``attention-jax train --model``.

    Returns:
      Sorted list of names.
    """
    return sorted(_MODELS)


def create_model(
    name: str, *, num_classes: int, in_channels: int = 1, attention: str | None = None,
    api: str = "linen", rngs: Any = None, **overrides: Any,
) -> Any:
    """Build a classifier by name: (N, H, W, C) images -> (N, num_classes) logits.

    Args:
      name: one of ``list_models()``.
      num_classes: number of output classes.
      in_channels: channels C of the input images.
      attention: a registered attention name (``attention_jax.list_attention()``) for models
        that take one (``"resnet"``), or None.
      api: ``"linen"`` or ``"nnx"`` (``"nnx"``: ``"resnet"`` only, for now).
      rngs: the ``nnx.Rngs`` that initialise an nnx model (required for ``api="nnx"``).
      **overrides: fields of the model overriding its defaults.

    Returns:
      linen: an unbound ``flax.linen.Module`` called as ``model.apply(variables, x,
      train=...)``. nnx: an initialised ``nnx.Module`` called as ``model(x)``, with the same
      parameter tree.
    """
    check_choice("create_model", "name", name, list_models())
    check_choice("create_model", "api", api, ("linen", "nnx"))
    if attention is not None and not _MODELS[name][1]:
        raise fail("create_model", "attention",
                   f"None for model {name!r} (models taking attention: "
                   f"{', '.join(k for k, v in _MODELS.items() if v[1])})", repr(attention))
    if api == "nnx":
        if name != "resnet":
            raise fail("create_model", "api", f"'linen' for model {name!r} (models with an "
                       "nnx version: resnet)", repr(api))
        if rngs is None:
            raise fail("create_model", "rngs", "an nnx.Rngs with api='nnx'", None)
        from attention_jax.models.resnet_nnx import LAYOUTS as NNX_LAYOUTS
        from attention_jax.models.resnet_nnx import ResNet as NNXResNet

        return NNXResNet(num_classes=num_classes, in_channels=in_channels, attention=attention,
                         rngs=rngs, **{**NNX_LAYOUTS["resnet_tiny"], **overrides})
    if name == "cnn":
        from attention_jax.models.cnn import CNN

        return CNN(num_classes=num_classes, **overrides)
    if name == "stcnn":
        from attention_jax.models.cnn import STCNN

        return STCNN(num_classes=num_classes, channels=in_channels, **overrides)
    from attention_jax.models.resnet import LAYOUTS, ResNet

    fields = {**LAYOUTS["resnet_tiny"], **overrides}
    return ResNet(num_classes=num_classes, in_channels=in_channels, attention=attention,
                  **fields)
