"""ResNet written once for both APIs: the plan of every layer, and forwards taking layers.

A plan is the validated options of a ResNet turned into frozen data: which layers exist, with
which widths, strides and options (``resnet_plan``, ``block_plan``). The forwards (``stem``,
``residual_block``, ``head``) take the layers as callables by name, as the mechanisms in
``attention_jax.functional`` do. ``models.resnet`` (linen) and ``models.resnet_nnx`` (nnx)
declare the layers a plan lists and call these forwards; they import nothing from each other.

The options cover timm's ResNet family (``timm.models.resnet``, ``sknet``, ``resnest`` and the
ResNet-shaped ``byobnet`` models):

- ``stem_type``: ``"plain"`` (7x7/2 conv), ``"deep"`` (three 3x3 convs of widths w, w, 2w:
  the 'c'/'d' ResNets) or ``"tiered"`` (3w/4, w, 2w: the 't' ResNets), each conv followed by
  BatchNorm and ReLU; then a 3x3/2 max pool, or with ``stem_pool=False`` the last stem conv
  strides 2 instead (timm's ``byobnet`` stems). ``small_stem``: one 3x3/1 conv, no pool
  (CIFAR/digit-sized images).
- ``avg_down``: the projection shortcut average-pools 2x2 (ceil mode, padding not counted) and
  then applies a 1x1/1 conv, instead of a 1x1 conv with stride ('d' ResNets, ResNeSt).
- ``avd``: the block's stride moves from its 3x3 conv to a 3x3 average pool after it
  (ResNeSt's "avd", pool padding counted as torch's default).
- ``spatial_conv``: the block's 3x3 conv is a plain conv + BN + ReLU, an SK ``SelectiveKernel``
  or a ResNeSt ``SplitAttention`` (each holding its own BN and ReLU).
- ``attention`` (a registry name) at ``attention_position`` ``"last"`` (after the block's last
  BN, before the residual add: timm's ``ResNet``) or ``"mid"`` (after the 3x3 conv, at the
  block's inner width: timm's ``byobnet``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from attention_jax._validation import check_choice, check_nhwc, check_positive_int, fail
from attention_jax.functional._numerics import acc_dtype
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.functional.gating import get_act
from attention_jax.functional.pooling import avg_pool2d, global_avg_pool

__all__ = [
    "LAYOUTS",
    "layout_builder",
    "BLOCKS",
    "STEM_TYPES",
    "SPATIAL_CONVS",
    "ATTENTION_POSITIONS",
    "Conv",
    "Norm",
    "Spatial",
    "Attention",
    "Dense",
    "BlockPlan",
    "ResNetPlan",
    "block_plan",
    "resnet_plan",
    "stem",
    "residual_block",
    "head",
    "max_pool_3x3_s2",
    "avg_down_pool",
]

Layer = Callable[[jax.Array], jax.Array]

BLOCKS = ("basic", "bottleneck")
STEM_TYPES = ("plain", "deep", "tiered")
SPATIAL_CONVS = ("conv", "sk", "splat")
ATTENTION_POSITIONS = ("last", "mid")


LAYOUTS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "layers": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "layers": (3, 4, 23, 3)},
    # For CPU training on small images (digits): three 1-block stages, 16-32-64 wide.
    "resnet_tiny": {"block": "basic", "layers": (1, 1, 1), "widths": (16, 32, 64),
                    "stem_width": 16, "small_stem": True},
}
"""The named layouts: keyword arguments for ``ResNet`` (both APIs)."""


def layout_builder(cls: type, layout: str) -> Callable[..., Any]:
    """A function building ``cls`` (linen or nnx ``ResNet``) with a layout of ``LAYOUTS``.

    Args:
      cls: the ``ResNet`` class of one API.
      layout: a key of ``LAYOUTS``.

    Returns:
      ``build(**kwargs) -> cls(**{**LAYOUTS[layout], **kwargs})``, named after the layout.
    """
    def build(**kwargs: Any) -> Any:
        return cls(**{**LAYOUTS[layout], **kwargs})

    build.__name__ = build.__qualname__ = layout
    build.__doc__ = (f"The {layout} layout as a ``{cls.__module__}.{cls.__name__}``, (N, H, W, "
                     f"3) -> (N, num_classes).\n\n    Args:\n      **kwargs: ``ResNet`` fields "
                     f"overriding the layout ({LAYOUTS[layout]}).\n\n    Returns:\n      The "
                     f"``ResNet``.")
    return build


# --- layer declarations: what each API builds -------------------------------------------------

@dataclass(frozen=True)
class Conv:
    """A bias-free 2D conv (k x k, stride, groups), padding ``k // 2`` on every side."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def conv_general_dilated(self) -> Callable[..., jax.Array]:
        """The convolution the layer runs: the library's for 1x1 kernels (a matmul over the
        pixels on the CPU: XLA:CPU ran a bottleneck's 1x1 convolutions and above all their
        gradients slowly), XLA's own for the rest (splitting the grouped 3x3s of the 32-group
        models per group would make programs of ~1,000 convolutions, slow to compile)."""
        return conv_general_dilated if self.kernel == 1 else jax.lax.conv_general_dilated


@dataclass(frozen=True)
class Norm:
    """A BatchNorm over ``channels`` with PyTorch's defaults."""

    channels: int


@dataclass(frozen=True)
class Spatial:
    """An SK (``kind="sk"``: ``SelectiveKernel``) or split-attention (``"splat"``:
    ``SplitAttention``) conv: ``in_channels`` -> ``out_channels`` with ``stride`` and the
    mechanism's own ``options``."""

    kind: str
    in_channels: int
    out_channels: int
    stride: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attention:
    """A registered attention mechanism (``create_attention(name, channels, **options)``)."""

    name: str
    channels: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dense:
    """The classifier: a linear layer with bias."""

    in_features: int
    out_features: int


LayerSpec = Conv | Norm | Spatial | Attention | Dense


def _freeze(value: Any) -> Any:
    """Options as hashable data (plans are static attributes of nnx modules)."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


# --- plans -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockPlan:
    """One residual block: its widths, stride, options and the layers it declares.

    ``layers`` maps each parameter name (``conv1``, ``bn1``, ``conv2``, ...,
    ``downsample_conv``/``downsample_bn``, ``attn``) to its declaration, in forward order.
    """

    in_channels: int
    planes: int
    width: int  # the 3x3 conv's width (bottleneck: planes * base_width / 64 * groups)
    out_channels: int
    stride: int
    bottleneck: bool
    spatial_conv: str
    avd: bool
    attention_position: str
    shortcut: str  # "identity", "conv" (1x1/stride) or "avg" (avg pool, then 1x1/1)
    layers: tuple[tuple[str, LayerSpec], ...]

    @property
    def has_attention(self) -> bool:
        return any(name == "attn" for name, _ in self.layers)


@dataclass(frozen=True)
class ResNetPlan:
    """A whole ResNet: stem layers, blocks (``layer{s}_{b}``, s from 1) and the classifier."""

    in_channels: int
    stem_layers: tuple[tuple[str, LayerSpec], ...]  # stem_conv{i}/stem_bn{i}..., conv1, bn1
    stem_pool: bool
    stages: tuple[tuple[BlockPlan, ...], ...]
    num_features: int
    num_classes: int | None
    block_options: Mapping[str, Any]  # the options every block shares (ResNetBlock fields)

    @property
    def blocks(self) -> tuple[tuple[str, BlockPlan], ...]:
        return tuple((f"layer{s}_{b}", p) for s, stage in enumerate(self.stages, start=1)
                     for b, p in enumerate(stage))

    @property
    def head_layers(self) -> tuple[tuple[str, LayerSpec], ...]:
        if self.num_classes is None:
            return ()
        return (("fc", Dense(self.num_features, self.num_classes)),)


def _spatial_options(fn: str, spatial_conv: str, spatial_kwargs: Mapping[str, Any] | None,
                     groups: int) -> dict[str, Any]:
    """Options of the SK / split-attention conv replacing the block's 3x3 conv."""
    check_choice(fn, "spatial_conv", spatial_conv, SPATIAL_CONVS)
    opts = dict(spatial_kwargs or {})
    if spatial_conv == "conv":
        if opts:
            raise fail(fn, "spatial_kwargs", "empty when spatial_conv='conv'", repr(opts))
        return opts
    for key in ("channels", "out_channels", "stride"):
        if key in opts:
            raise fail(fn, "spatial_kwargs", "free of channels/out_channels/stride (the block "
                       "sets them)", repr(opts))
    opts.setdefault("groups", groups)
    if spatial_conv == "splat":
        # ResNeSt's own widths: d = max(C * radix / 4, 32) (its reduction_factor 4).
        opts.setdefault("rd_ratio", 0.25)
    return opts


def block_plan(
    fn: str,
    *,
    in_channels: int,
    planes: int,
    stride: int = 1,
    block: str = "basic",
    groups: int = 1,
    base_width: int = 64,
    spatial_conv: str = "conv",
    spatial_kwargs: Mapping[str, Any] | None = None,
    attention: str | None = None,
    attention_kwargs: Mapping[str, Any] | None = None,
    attention_position: str = "last",
    avg_down: bool = False,
    avd: bool = False,
) -> BlockPlan:
    """Validate one block's options and list its layers.

    Args:
      fn: caller name for error messages.
      in_channels: input channels.
      planes: the stage width (basic: output width; bottleneck: output / 4).
      stride: 1 or more; on the 3x3 conv (or, with ``avd``, on the pool after it).
      block: ``"basic"`` or ``"bottleneck"``.
      groups, base_width: ResNeXt cardinality and width per group (bottleneck only).
      spatial_conv, spatial_kwargs: the 3x3 conv's kind and the SK/splat options.
      attention, attention_kwargs, attention_position: the attention mechanism, its options
        (``dtype`` etc. are added by the caller) and where it goes (``"last"``/``"mid"``).
      avg_down: average-pool shortcut (see the module docstring).
      avd: stride by a 3x3 average pool after the 3x3 conv.

    Returns:
      The ``BlockPlan``.
    """
    check_choice(fn, "block", block, BLOCKS)
    for arg, v in (("in_channels", in_channels), ("planes", planes), ("stride", stride),
                   ("groups", groups), ("base_width", base_width)):
        check_positive_int(fn, arg, v)
    check_choice(fn, "attention_position", attention_position, ATTENTION_POSITIONS)
    sk = _spatial_options(fn, spatial_conv, spatial_kwargs, groups)
    bottleneck = block == "bottleneck"
    if bottleneck:
        width, out = int(planes * (base_width / 64.0)) * groups, planes * 4
        check_positive_int(fn, "planes * base_width / 64", width)
    else:
        if groups != 1 or base_width != 64:
            raise fail(fn, "groups/base_width", "1/64 for the basic block (as torchvision)",
                       f"{groups}/{base_width}")
        width, out = planes, planes
    conv_stride = 1 if avd else stride
    spatial_in = width if bottleneck else in_channels

    def spatial() -> LayerSpec:
        if spatial_conv == "conv":
            return Conv(spatial_in, width, 3, conv_stride, groups)
        return Spatial(spatial_conv, spatial_in, width, conv_stride, _freeze(sk))

    layers: list[tuple[str, LayerSpec]] = []
    attn = (("attn", Attention(attention, width if attention_position == "mid" else out,
                               _freeze(attention_kwargs or {}))),) if attention else ()
    plain = spatial_conv == "conv"
    if bottleneck:
        layers += [("conv1", Conv(in_channels, width, 1)), ("bn1", Norm(width)),
                   ("conv2", spatial())]
        layers += [("bn2", Norm(width))] if plain else []
        layers += list(attn) if attention_position == "mid" else []
        layers += [("conv3", Conv(width, out, 1)), ("bn3", Norm(out))]
    else:
        layers += [("conv1", spatial())]
        layers += [("bn1", Norm(width))] if plain else []
        layers += list(attn) if attention_position == "mid" else []
        layers += [("conv2", Conv(width, out, 3)), ("bn2", Norm(out))]
    layers += list(attn) if attention_position == "last" else []
    shortcut = "identity"
    if stride != 1 or in_channels != out:
        shortcut = "avg" if avg_down else "conv"
        layers += [("downsample_conv", Conv(in_channels, out, 1, 1 if avg_down else stride)),
                   ("downsample_bn", Norm(out))]
    return BlockPlan(in_channels, planes, width, out, stride, bottleneck, spatial_conv, avd,
                     attention_position, shortcut, tuple(layers))


def _stem_layers(fn: str, in_channels: int, stem_width: int, stem_type: str, stem_pool: bool,
                 small_stem: bool) -> tuple[tuple[tuple[str, LayerSpec], ...], int]:
    check_positive_int(fn, "stem_width", stem_width)
    check_choice(fn, "stem_type", stem_type, STEM_TYPES)
    if small_stem:
        if stem_type != "plain" or not stem_pool:
            raise fail(fn, "small_stem", "False with stem_type other than 'plain' or "
                       "stem_pool=False (the small stem is one 3x3/1 conv without pool)",
                       f"True with stem_type={stem_type!r}, stem_pool={stem_pool}")
        return (("conv1", Conv(in_channels, stem_width, 3)), ("bn1", Norm(stem_width))), \
            stem_width
    if stem_type == "plain":
        if not stem_pool:
            raise fail(fn, "stem_pool", "True for stem_type='plain' (timm has no 7x7 stem "
                       "without pool)", stem_pool)
        return (("conv1", Conv(in_channels, stem_width, 7, 2)), ("bn1", Norm(stem_width))), \
            stem_width
    first = stem_width if stem_type == "deep" else 3 * (stem_width // 4)
    check_positive_int(fn, "stem_width // 4 * 3 (tiered stem)", first)
    widths = (first, stem_width, 2 * stem_width)
    strides = (2, 1, 1 if stem_pool else 2)
    names = (("stem_conv1", "stem_bn1"), ("stem_conv2", "stem_bn2"), ("conv1", "bn1"))
    layers, cin = [], in_channels
    for (conv, bn), w, s in zip(names, widths, strides, strict=True):
        layers += [(conv, Conv(cin, w, 3, s)), (bn, Norm(w))]
        cin = w
    return tuple(layers), cin


def resnet_plan(
    fn: str = "ResNet",
    *,
    layers: Sequence[int] = (2, 2, 2, 2),
    block: str = "basic",
    widths: Sequence[int] = (64, 128, 256, 512),
    num_classes: int | None = 1000,
    in_channels: int = 3,
    stem_width: int = 64,
    stem_type: str = "plain",
    stem_pool: bool = True,
    small_stem: bool = False,
    groups: int = 1,
    base_width: int = 64,
    spatial_conv: str = "conv",
    spatial_kwargs: Mapping[str, Any] | None = None,
    attention: str | None = None,
    attention_kwargs: Mapping[str, Any] | None = None,
    attention_position: str = "last",
    avg_down: bool = False,
    avd: bool = False,
) -> ResNetPlan:
    """Validate a ResNet's options and plan every layer (the fields of ``models.ResNet``).

    Stage s has ``layers[s]`` blocks of width ``widths[s]``, stride 2 on the first block from
    the second stage on. The stem ends with ``conv1``/``bn1``; deep and tiered stems put
    ``stem_conv1``/``stem_bn1`` and ``stem_conv2``/``stem_bn2`` before them.

    Returns:
      The ``ResNetPlan``.
    """
    check_positive_int(fn, "in_channels", in_channels)
    if num_classes is not None:
        check_positive_int(fn, "num_classes", num_classes)
    layers, widths = tuple(layers), tuple(widths)
    if len(layers) != len(widths) or not layers:
        raise fail(fn, "layers", f"one block count per stage width (len(widths)={len(widths)})",
                   repr(layers))
    for n in layers:
        check_positive_int(fn, "layers", n)
    stem_layers, cin = _stem_layers(fn, in_channels, stem_width, stem_type, stem_pool,
                                    small_stem)
    options = {"block": block, "groups": groups, "base_width": base_width,
               "spatial_conv": spatial_conv, "spatial_kwargs": spatial_kwargs,
               "attention": attention, "attention_kwargs": attention_kwargs,
               "attention_position": attention_position, "avg_down": avg_down, "avd": avd}
    stages = []
    for s, (n, planes) in enumerate(zip(layers, widths, strict=True)):
        stage = []
        for b in range(n):
            p = block_plan(fn, in_channels=cin, planes=planes,
                           stride=2 if (s > 0 and b == 0) else 1, **options)
            stage.append(p)
            cin = p.out_channels
        stages.append(tuple(stage))
    return ResNetPlan(in_channels, stem_layers, stem_pool and not small_stem, tuple(stages),
                      cin, num_classes, _freeze(options))


# --- forwards ---------------------------------------------------------------------------------

def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3/2 max pooling with one pixel of padding that never wins (torch's ``MaxPool2d``)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)


def avg_down_pool(x: jax.Array, stride: int) -> jax.Array:
    """``AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)`` (timm's avg-down).

    An odd side keeps its last row/column as a window of its own (ceil mode), averaged over
    the pixels it holds. Sums accumulate in float32 for low-precision input.
    """
    h, w = x.shape[1:3]

    def padding(n: int) -> tuple[int, int]:
        out = -(-(n - 2) // stride) + 1  # ceil mode; a window must start inside the input
        out -= (out - 1) * stride >= n
        return 0, max(0, (out - 1) * stride + 2 - n)

    pad = ((0, 0), padding(h), padding(w), (0, 0))
    win, strides = (1, 2, 2, 1), (1, stride, stride, 1)
    a = x.astype(acc_dtype(x))
    total = jax.lax.reduce_window(a, 0.0, jax.lax.add, win, strides, pad)
    count = jax.lax.reduce_window(jnp.ones((1, h, w, 1), a.dtype), 0.0, jax.lax.add, win,
                                  strides, pad)
    return (total / count).astype(x.dtype)


def stem(x: jax.Array, plan: ResNetPlan, layers: Mapping[str, Layer], *,
         act: str | Layer = "relu") -> jax.Array:
    """The stem: each conv -> norm -> act of ``plan.stem_layers``, then the max pool if any.

    Args:
      x: (N, H, W, in_channels) images.
      plan: the network's plan.
      layers: callables by the names of ``plan.stem_layers`` (norms in the wanted mode).
      act: activation.

    Returns:
      (N, H / 4, W / 4, stem width) (H, W with the small stem).
    """
    check_nhwc("ResNet", "x", x, plan.in_channels)
    act_fn = get_act(act)
    names = [n for n, _ in plan.stem_layers]
    for conv, norm in zip(names[::2], names[1::2], strict=True):
        x = act_fn(layers[norm](layers[conv](x)))
    return max_pool_3x3_s2(x) if plan.stem_pool else x


def residual_block(x: jax.Array, plan: BlockPlan, layers: Mapping[str, Layer], *,
                   act: str | Layer = "relu") -> jax.Array:
    """One residual block: ``act(branch(x) + shortcut(x))``.

    Bottleneck branch: conv1 -> bn1 -> act -> 3x3 unit -> [avd pool] -> [attn "mid"] -> conv3
    -> bn3 -> [attn "last"]; basic: 3x3 unit -> [avd pool] -> [attn "mid"] -> conv2 -> bn2 ->
    [attn "last"]. The 3x3 unit is conv -> bn -> act, or the SK/split-attention module alone
    (it normalises and activates inside). Shortcut: identity, ``downsample_bn(downsample_conv(
    x))``, or with avg-down the conv after ``avg_down_pool``.

    Args:
      x: (N, H, W, in_channels) feature map.
      plan: the block's plan.
      layers: callables by the names in ``plan.layers`` (norms and mechanisms in the wanted
        mode).
      act: activation.

    Returns:
      (N, H / stride, W / stride, out_channels), dtype of the branch.
    """
    check_nhwc("ResNetBlock", "x", x, plan.in_channels)
    act_fn = get_act(act)
    plain = plan.spatial_conv == "conv"
    attn_at = plan.attention_position if plan.has_attention else None

    def spatial(h, conv, norm):
        h = layers[conv](h)
        if plain:
            h = act_fn(layers[norm](h))
        if plan.avd and plan.stride > 1:
            h = avg_pool2d(h, kernel_size=3, stride=plan.stride, padding=1)
        if attn_at == "mid":
            h = layers["attn"](h)
        return h

    if plan.bottleneck:
        h = act_fn(layers["bn1"](layers["conv1"](x)))
        h = spatial(h, "conv2", "bn2")
        h = layers["bn3"](layers["conv3"](h))
    else:
        h = spatial(x, "conv1", "bn1")
        h = layers["bn2"](layers["conv2"](h))
    if attn_at == "last":
        h = layers["attn"](h)
    shortcut = x
    if plan.shortcut == "avg" and plan.stride > 1:
        shortcut = avg_down_pool(shortcut, plan.stride)
    if plan.shortcut != "identity":
        shortcut = layers["downsample_bn"](layers["downsample_conv"](shortcut))
    return act_fn(h + shortcut.astype(h.dtype))


def head(x: jax.Array, plan: ResNetPlan, layers: Mapping[str, Layer]) -> jax.Array:
    """Global average pool, then ``fc`` (or the pooled features with ``num_classes=None``).

    Args:
      x: (N, H, W, num_features) feature map.
      plan: the network's plan.
      layers: ``{"fc": layer}`` unless ``plan.num_classes`` is None.

    Returns:
      (N, num_classes) logits, or (N, num_features).
    """
    h = global_avg_pool(x)
    return h if plan.num_classes is None else layers["fc"](h)
