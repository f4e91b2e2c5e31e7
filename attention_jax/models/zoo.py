"""The model zoo: timm's attention ResNets by name, and the small models the trainer knows.

``create_model("seresnet50")`` builds the linen (or nnx) ``ResNet`` equal to timm's model of
that name, layer for layer; its weights load with ``attention_jax.interop.load_timm_state_dict``
and ``pretrained_config(name)`` gives the configuration timm publishes with the default weights
(input size, mean/std, interpolation, crop_pct, top-1). Any ResNet name also takes
``attention=<registry name>`` for mechanisms timm ships no weights for (``cbam``, ``bam``, ...).
The names ``cnn``, ``stcnn`` and ``resnet`` are the small digit classifiers of
``attention-jax train``.

The configurations are data copied from timm 1.0.31 (``timm.create_model(name).pretrained_cfg``
of the default tag) and the top-1/top-5 from timm's ``results/results-imagenet.csv`` at the
default input size and crop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attention_jax._validation import check_choice, fail

__all__ = [
    "PretrainedConfig",
    "ModelInfo",
    "list_models",
    "model_info",
    "pretrained_config",
    "create_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedConfig:
    """timm's configuration of a model's default pretrained weights.

    Fields: ``tag`` (timm's weight tag, e.g. ``"a1_in1k"``; ``"untrained"`` when timm has no
    weights), ``hf_hub_id`` (where timm downloads them from, or None), ``input_size`` (C, H, W)
    for evaluation, ``interpolation`` (``"bicubic"``/``"bilinear"``) and ``crop_pct`` of the
    eval transform (resize the short side to ``floor(size / crop_pct)``, centre-crop ``size``),
    ``mean``/``std`` (per channel, of images scaled to [0, 1]), ``num_classes``,
    ``test_input_size``/``test_crop_pct`` (timm's larger test-time size, or None), ``top1``/
    ``top5`` (ImageNet-1k validation accuracy in %, at ``input_size`` and ``crop_pct``, or None).
    """

    tag: str
    hf_hub_id: str | None
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    test_input_size: tuple[int, int, int] | None = None
    test_crop_pct: float | None = None
    top1: float | None = None
    top5: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One name of the zoo: what it is and how it is built.

    Fields: ``name``; ``description``; ``architecture`` (``ResNet`` fields, or the fields of the
    small model); ``family`` (``"resnet"`` for every ResNet, ``"cnn"``/``"stcnn"``);
    ``timm_layout`` (``"resnet"``: timm's ``ResNet`` class keys, ``"byobnet"``: its ``ByobNet``
    keys, or None: no timm weights); ``timm_params`` (timm's parameter count with 1000 classes);
    ``pretrained`` (the ``PretrainedConfig``, or None); ``default_in_channels``;
    ``takes_attention`` (whether ``attention=`` is accepted).
    """

    name: str
    description: str
    architecture: Mapping[str, Any]
    family: str = "resnet"
    timm_layout: str | None = "resnet"
    timm_params: int | None = None
    pretrained: PretrainedConfig | None = None
    default_in_channels: int = 3
    takes_attention: bool = True


_BASIC = {"block": "basic"}
_BOTTLE = {"block": "bottleneck"}
_D = {"stem_type": "deep", "stem_width": 32, "avg_down": True}  # timm's 'd' ResNets
_L18, _L34, _L50, _L101 = ((2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3))
# timm's SelectiveKernel(rd_ratio, rd_divisor, split_input) in its SK-ResNets: the attention
# width is make_divisible(out * rd_ratio, rd_divisor) without a floor (rd_min_channels=1).
_SK18 = {"spatial_conv": "sk", "spatial_kwargs": {"rd_ratio": 1 / 8, "rd_divisor": 16,
                                                  "rd_min_channels": 1, "split_input": True}}
_SKX = {"spatial_conv": "sk", "spatial_kwargs": {"rd_ratio": 1 / 16, "rd_divisor": 32,
                                                 "rd_min_channels": 1}}
_SPLAT = {"spatial_conv": "splat", "spatial_kwargs": {"radix": 2}, "avd": True, **_D}
# timm's byobnet 'gca': GlobalContext(fuse_add=True, fuse_scale=False), r = 8, LayerNorm eps
# 1e-6, conv_attn with a bias; after the 3x3 conv of each bottleneck.
_GCA = {"attention": "gc", "attention_position": "mid",
        "attention_kwargs": {"fuse_add": True, "fuse_scale": False, "rd_ratio": 1 / 8,
                             "rd_divisor": 1, "eps": 1e-6, "attn_bias": True}}


def _cfg(tag: str, top1: float | None = None, top5: float | None = None, *,
         crop_pct: float = 0.875, interpolation: str = "bicubic",
         input_size: tuple[int, int, int] = (3, 224, 224),
         test_input_size: tuple[int, int, int] | None = None,
         test_crop_pct: float | None = None, name: str = "") -> PretrainedConfig:
    hub = None if tag == "untrained" else f"timm/{name}.{tag}"
    return PretrainedConfig(tag, hub, input_size, interpolation, crop_pct,
                            test_input_size=test_input_size, test_crop_pct=test_crop_pct,
                            top1=top1, top5=top5)


_T288 = {"test_input_size": (3, 288, 288)}

# name -> (description, architecture, timm layout, timm params, pretrained cfg kwargs)
_TIMM: dict[str, tuple[str, dict[str, Any], str, int, dict[str, Any]]] = {
    "resnet18": ("ResNet-18", {**_BASIC, "layers": _L18}, "resnet", 11_689_512,
                 dict(tag="a1_in1k", top1=71.504, top5=90.086, crop_pct=0.95,
                      test_crop_pct=1.0, **_T288)),
    "resnet34": ("ResNet-34", {**_BASIC, "layers": _L34}, "resnet", 21_797_672,
                 dict(tag="a1_in1k", top1=76.420, top5=92.896, crop_pct=0.95,
                      test_crop_pct=1.0, **_T288)),
    "resnet50": ("ResNet-50", {**_BOTTLE, "layers": _L50}, "resnet", 25_557_032,
                 dict(tag="a1_in1k", top1=80.382, top5=94.598, crop_pct=0.95,
                      test_crop_pct=1.0, **_T288)),
    "resnet101": ("ResNet-101", {**_BOTTLE, "layers": _L101}, "resnet", 44_549_160,
                  dict(tag="a1h_in1k", top1=81.950, top5=95.760, crop_pct=0.95,
                       test_crop_pct=1.0, **_T288)),
    "resnet50d": ("ResNet-50-D (deep stem, avg-pool shortcut)", {**_BOTTLE, "layers": _L50, **_D},
                  "resnet", 25_576_264,
                  dict(tag="ra2_in1k", top1=80.546, top5=95.160, test_crop_pct=0.95, **_T288)),
    "seresnet18": ("SE-ResNet-18", {**_BASIC, "layers": _L18, "attention": "se"}, "resnet",
                   11_779_624, dict(tag="untrained", test_crop_pct=0.95, **_T288)),
    "seresnet34": ("SE-ResNet-34", {**_BASIC, "layers": _L34, "attention": "se"}, "resnet",
                   21_960_416, dict(tag="untrained", test_crop_pct=0.95, **_T288)),
    "seresnet50": ("SE-ResNet-50", {**_BOTTLE, "layers": _L50, "attention": "se"}, "resnet",
                   28_088_024, dict(tag="a1_in1k", top1=80.012, top5=94.704, crop_pct=0.95,
                                    test_crop_pct=1.0, **_T288)),
    "seresnet101": ("SE-ResNet-101", {**_BOTTLE, "layers": _L101, "attention": "se"}, "resnet",
                    49_326_872, dict(tag="untrained", test_crop_pct=0.95, **_T288)),
    "ecaresnet50d": ("ECA-ResNet-50-D", {**_BOTTLE, "layers": _L50, **_D, "attention": "eca"},
                     "resnet", 25_576_350,
                     dict(tag="miil_in1k", top1=80.634, top5=95.310, test_crop_pct=0.95,
                          **_T288)),
    "ecaresnet101d": ("ECA-ResNet-101-D", {**_BOTTLE, "layers": _L101, **_D, "attention": "eca"},
                      "resnet", 44_568_563,
                      dict(tag="miil_in1k", top1=82.180, top5=96.062, test_crop_pct=0.95,
                           **_T288)),
    "skresnet18": ("SK-ResNet-18 (split input)", {**_BASIC, "layers": _L18, **_SK18}, "resnet",
                   11_958_056, dict(tag="ra_in1k", top1=73.020, top5=91.172)),
    "skresnet34": ("SK-ResNet-34 (split input)", {**_BASIC, "layers": _L34, **_SK18}, "resnet",
                   22_282_376, dict(tag="ra_in1k", top1=76.956, top5=93.320)),
    "skresnext50_32x4d": ("SKNet-50 (SK-ResNeXt-50 32x4d)",
                          {**_BOTTLE, "layers": _L50, "groups": 32, "base_width": 4, **_SKX},
                          "resnet", 27_479_784, dict(tag="ra_in1k", top1=80.168, top5=94.644)),
    "resnest14d": ("ResNeSt-14d", {**_BOTTLE, "layers": (1, 1, 1, 1), **_SPLAT}, "resnet",
                   10_611_688, dict(tag="gluon_in1k", top1=75.516, top5=92.512,
                                    interpolation="bilinear")),
    "resnest26d": ("ResNeSt-26d", {**_BOTTLE, "layers": (2, 2, 2, 2), **_SPLAT}, "resnet",
                   17_069_448, dict(tag="gluon_in1k", top1=78.476, top5=94.300,
                                    interpolation="bilinear")),
    "resnest50d": ("ResNeSt-50d", {**_BOTTLE, "layers": _L50, **_SPLAT}, "resnet", 27_483_240,
                   dict(tag="in1k", top1=80.958, top5=95.372, interpolation="bilinear")),
    "gcresnet50t": ("GC-ResNet-50-T (tiered stem, global context after the 3x3 conv)",
                    {**_BOTTLE, "layers": _L50, "stem_type": "tiered", "stem_width": 32,
                     "stem_pool": False, **_GCA}, "byobnet", 25_897_080,
                    dict(tag="ra2_in1k", top1=80.944, top5=95.458, crop_pct=0.9,
                         input_size=(3, 256, 256), test_crop_pct=1.0, **_T288)),
}

_MODELS: dict[str, ModelInfo] = {
    name: ModelInfo(name, desc, arch, "resnet", layout, params, _cfg(**cfg, name=name))
    for name, (desc, arch, layout, params, cfg) in _TIMM.items()
}
_MODELS.update({
    "cnn": ModelInfo("cnn", "CNN baseline (attention_jax.models.CNN)", {}, "cnn", None,
                     default_in_channels=1, takes_attention=False),
    "stcnn": ModelInfo("stcnn", "spatial transformer + the same CNN (attention_jax.models.STCNN)",
                       {}, "stcnn", None, default_in_channels=1, takes_attention=False),
    "resnet": ModelInfo("resnet", "tiny ResNet-style backbone taking attention=<name> "
                        "(attention_jax.models.ResNet, layout 'resnet_tiny')",
                        {"block": "basic", "layers": (1, 1, 1), "widths": (16, 32, 64),
                         "stem_width": 16, "small_stem": True}, "resnet", None,
                        default_in_channels=1),
})

_APIS = ("linen", "nnx")


def list_models() -> list[str]:
    """The names ``create_model`` accepts: timm's attention ResNets and the trainer's models.

    Returns:
      Sorted list of names.
    """
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """What a zoo name is and how it is built.

    Args:
      name: one of ``list_models()``.

    Returns:
      Its ``ModelInfo``.
    """
    check_choice("model_info", "name", name, list_models())
    return _MODELS[name]


def pretrained_config(name: str) -> PretrainedConfig:
    """timm's pretrained configuration of a model name (default weights' tag).

    Args:
      name: a timm name of the zoo (``list_models()`` less ``cnn``, ``stcnn``, ``resnet``).

    Returns:
      The ``PretrainedConfig`` (input size, mean/std, interpolation, crop_pct, top-1, ...).
    """
    timm_names = [n for n in list_models() if _MODELS[n].pretrained is not None]
    check_choice("pretrained_config", "name", name, timm_names)
    return _MODELS[name].pretrained


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    api: str = "linen",
    rngs: Any = None,
    **overrides: Any,
) -> Any:
    """Build a zoo model by name: (N, H, W, C) images -> (N, num_classes) logits.

    Args:
      name: one of ``list_models()``.
      num_classes: classes of the classifier (timm's ImageNet weights: 1000).
      api: ``"linen"`` (an unbound module: ``model.apply(variables, x, train=...)``) or
        ``"nnx"`` (a module holding its parameters; needs ``rngs``).
      rngs: ``flax.nnx.Rngs`` for ``api="nnx"``.
      **overrides: fields of the model overriding the name's architecture: for ResNets any
        ``ResNet`` field (``in_channels``, ``attention``, ``attention_kwargs``, ``dtype``, ...;
        ``attention=<registry name>`` on any ResNet name); for ``cnn``/``stcnn`` their fields,
        plus ``in_channels`` (their ``channels``; linen ``cnn`` infers it), ``in_size`` (the
        input's (H, W), which nnx needs to declare the dense layers; default 28x28; linen
        infers it) and ``attention=None``. ``in_channels`` defaults to 3, or 1 for ``cnn``,
        ``stcnn`` and ``resnet`` (digits).

    Returns:
      The model (linen ``nn.Module`` or ``nnx.Module``).
    """
    fn = "create_model"
    check_choice(fn, "name", name, list_models())
    check_choice(fn, "api", api, _APIS)
    info = _MODELS[name]
    if api == "nnx" and rngs is None:
        raise fail(fn, "rngs", "given for api='nnx' (e.g. rngs=nnx.Rngs(0))", "None")
    in_channels = overrides.pop("in_channels", info.default_in_channels)
    if not info.takes_attention:
        attention = overrides.pop("attention", None)
        if attention is not None:
            takers = ", ".join(n for n in list_models() if _MODELS[n].takes_attention)
            raise fail(fn, "attention", f"None for model {name!r} (models taking attention: "
                       f"{takers})", repr(attention))
    if info.family == "resnet":
        kwargs = {**info.architecture, **overrides, "num_classes": num_classes,
                  "in_channels": in_channels}
        if api == "linen":
            from attention_jax.models.resnet import ResNet

            return ResNet(**kwargs)
        from attention_jax.models.resnet_nnx import ResNet as NnxResNet

        return NnxResNet(**kwargs, rngs=rngs)
    # cnn / stcnn: linen infers the input size at the first call; nnx declares its dense layers
    # from it (``in_size``, default 28x28).
    in_size = overrides.pop("in_size", None)
    if api == "linen":
        from attention_jax.models import cnn as small
    else:
        from attention_jax.models import cnn_nnx as small

        overrides = {**overrides, "rngs": rngs}
        if in_size is not None:
            overrides["in_size"] = tuple(in_size)
    cls = small.CNN if name == "cnn" else small.STCNN
    if name == "stcnn" or api == "nnx":
        overrides = {"channels": in_channels, **overrides}
    return cls(num_classes=num_classes, **overrides)
