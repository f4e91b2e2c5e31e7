"""Channel attention forwards (SE, ECA, ...): the wiring, written once for linen and nnx.

Each function takes the feature map plus the learned layers as plain callables (any
``array -> array`` function: a Flax linen or nnx layer, or a closure over explicit weights), so
the linen and nnx modules share one forward and users can call the math with their own weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import (
    check_layer_shape,
    check_nhwc,
    check_positive_int,
    check_power_of_two,
    fail,
)
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional._numerics import acc_dtype
from attention_jax.functional.gating import get_act, get_gate, rescale
from attention_jax.functional.pooling import (
    avg_pool2d,
    covariance_pool,
    global_avg_pool,
    global_max_pool,
    newton_schulz_sqrt,
)

__all__ = [
    "squeeze_excite",
    "efficient_channel_attention",
    "gather_excite",
    "global_context",
    "second_order_channel",
    "interpolate_nearest",
    "ge_gather",
]


@batch_dims(x=NHWC)
def squeeze_excite(
    x: jax.Array,
    *,
    reduce: Layer,
    expand: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    add_maxpool: bool = False,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Squeeze-and-excitation: global pool -> reduce -> act -> expand -> gate -> rescale.

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. With ``add_maxpool`` the squeeze is
    ``0.5 * (avg + max)`` as in timm's ``SEModule(add_maxpool=True)``.

    Args:
      x: (N, H, W, C) feature map.
      reduce: layer mapping (N, 1, 1, C) -> (N, 1, 1, R).
      expand: layer mapping (N, 1, 1, R) -> (N, 1, 1, C).
      act: hidden activation (name or callable).
      gate: gate (name or callable).
      add_maxpool: average the avg- and max-pooled descriptors.
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, 1, 1, C), the gate that multiplies ``x``.
    """
    check_nhwc("squeeze_excite", "x", x)
    act_fn, gate_fn = get_act(act), get_gate(gate)
    s = global_avg_pool(x, keepdims=True)
    if add_maxpool:
        s = 0.5 * s + 0.5 * global_max_pool(x, keepdims=True)
    w = gate_fn(expand(act_fn(reduce(s))))
    y = rescale(x, w)
    return (y, {"channel_weights": w}) if return_maps else y


@batch_dims(x=NHWC)
def efficient_channel_attention(
    x: jax.Array, *, conv: Layer, gate: str | Layer = "sigmoid", return_maps: bool = False
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """ECA: global avg pool -> 1D conv across channels (no bias) -> gate -> rescale.

    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    CVPR 2020 (official ``eca_layer``): the pooled (N, C) descriptor is read as a length-C signal
    with one feature, so the conv mixes each channel with its ``k`` neighbours.

    Args:
      x: (N, H, W, C) feature map.
      conv: layer mapping (N, C, 1) -> (N, C, 1) (a 1D conv, "same" padding, odd kernel).
      gate: gate (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, 1, 1, C), the gate that multiplies ``x``.
    """
    fn = "efficient_channel_attention"
    check_nhwc(fn, "x", x)
    gate_fn = get_gate(gate)
    n, c = x.shape[0], x.shape[-1]
    y = conv(global_avg_pool(x)[..., None])
    check_layer_shape(fn, "conv", y, (n, c, 1))
    w = gate_fn(y.reshape(n, 1, 1, c))
    out = rescale(x, w)
    return (out, {"channel_weights": w}) if return_maps else out


@batch_dims(x=NHWC)
def ge_gather(
    x: jax.Array,
    *,
    convs: Sequence[Layer],
    norms: Sequence[Layer],
    act: str | Layer = "relu",
) -> jax.Array:
    """Gather-excite's parameterised gather: conv -> norm, with ``act`` between (not after last).

    Hu et al., NeurIPS 2018 (GE-theta), as timm's ``GatherExcite(extra_params=True)``.

    Args:
      x: (N, H, W, C) feature map.
      convs: K >= 1 layers (depthwise strided convs) (N, H, W, C) -> (N, ceil(H/2), ..., C).
      norms: K layers (BatchNorm), one per conv.
      act: activation between the stages (name or callable).

    Returns:
      (N, h, w, C) the gathered context, dtype of the layers' output.
    """
    fn = "ge_gather"
    check_nhwc(fn, "x", x)
    convs, norms = list(convs), list(norms)
    if not convs:
        raise fail(fn, "convs", "a non-empty sequence of layers", "an empty sequence")
    if len(norms) != len(convs):
        raise fail(fn, "norms", f"{len(convs)} layers (one per conv)", len(norms))
    act_fn = get_act(act)
    for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
        x = norm(conv(x))
        if i < len(convs) - 1:
            x = act_fn(x)
    return x


@batch_dims(x=NHWC)
def interpolate_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize as ``torch.nn.functional.interpolate(mode="nearest")`` (NHWC).

    Source index ``floor(i * in / out)`` (PyTorch's legacy "nearest", used by timm's
    gather-excite), computed in integers; ``jax.image.resize`` uses half-pixel centres instead.

    Args:
      x: (N, h, w, C) feature map.
      size: output (H, W), each >= 0 (an empty source needs an empty output).

    Returns:
      (N, H, W, C), dtype of ``x``.
    """
    fn = "interpolate_nearest"
    check_nhwc(fn, "x", x)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise fail(fn, "size", "a pair (H, W)", repr(size))
    for s in size:
        check_positive_int(fn, "size", s, minimum=0)
    (h, w), (oh, ow) = x.shape[1:3], size
    if (h == 0 and oh) or (w == 0 and ow):
        raise fail(fn, "x", f"H, W >= 1 to resize to {tuple(size)}", f"shape {tuple(x.shape)}")
    rows = (jnp.arange(oh) * h) // max(oh, 1)
    cols = (jnp.arange(ow) * w) // max(ow, 1)
    return x[:, rows][:, :, cols]


@batch_dims(x=NHWC)
def gather_excite(
    x: jax.Array,
    *,
    extent: int = 0,
    gather: Layer | None = None,
    reduce: Layer | None = None,
    expand: Layer | None = None,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Gather-excite: gather context over an extent, excite by a gate interpolated back.

    Hu et al., "Gather-Excite: Exploiting Feature Context in CNNs", NeurIPS 2018, as in timm's
    ``GatherExcite``. Parameter-free gather (GE-theta-minus): global mean for ``extent=0``, else
    ``avg_pool2d(kernel 2e-1, stride e, padding e-1, count_include_pad=False)``. Parameterised
    gather (GE-theta): ``gather`` (e.g. strided depthwise convs) replaces the pooling. With
    ``reduce``/``expand`` an SE-style MLP (GE-theta-plus) maps the gathered context. The result
    is resized back to (H, W) by nearest interpolation, gated and multiplied in.

    Args:
      x: (N, H, W, C) feature map.
      extent: 0 (global) or a power of two; used only when ``gather`` is None.
      gather: layer (N, H, W, C) -> (N, h, w, C), or None for the parameter-free gather.
      reduce: layer (N, h, w, C) -> (N, h, w, R), or None (no MLP; then ``expand`` is None too).
      expand: layer (N, h, w, R) -> (N, h, w, C), or None.
      act: hidden activation of the MLP (name or callable).
      gate: gate (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, h, w, C): the gate at the gathered resolution ((1, 1) for the
      global gather), which is nearest-resized to (H, W) and multiplies ``x``.
    """
    fn = "gather_excite"
    check_nhwc(fn, "x", x)
    check_power_of_two(fn, "extent", extent, zero="global")
    if (reduce is None) != (expand is None):
        raise fail(fn, "reduce and expand", "both given or both None",
                   f"reduce={reduce!r}, expand={expand!r}")
    act_fn, gate_fn = get_act(act), get_gate(gate)
    if gather is not None:
        g = gather(x)
    elif extent == 0:
        g = global_avg_pool(x, keepdims=True)
    elif 0 in x.shape[1:3]:  # no pixels: no windows either, an empty (N, h, w, C) context
        g = jnp.zeros((x.shape[0], -(-x.shape[1] // extent), -(-x.shape[2] // extent),
                       x.shape[3]), x.dtype)
    else:
        k = 2 * extent - 1
        g = avg_pool2d(x, kernel_size=k, stride=extent, padding=k // 2, count_include_pad=False)
    if g.ndim != 4 or g.shape[0] != x.shape[0] or g.shape[-1] != x.shape[-1]:
        raise fail(fn, "gather", f"a layer returning (N, h, w, C) with N={x.shape[0]}, "
                   f"C={x.shape[-1]}", f"shape {tuple(g.shape)}")
    if reduce is not None:
        g = expand(act_fn(reduce(g)))
    gathered = g
    if g.shape[1:3] != (1, 1):
        g = interpolate_nearest(g, x.shape[1:3])
    y = rescale(x, gate_fn(g))
    # The gate commutes with the nearest resize: the map at the gathered size, computed only
    # when asked for.
    return (y, {"channel_weights": gate_fn(gathered)}) if return_maps else y


@batch_dims(x=NHWC)
def global_context(
    x: jax.Array,
    *,
    attn: Layer,
    add_transform: Sequence[Layer] | None = None,
    scale_transform: Sequence[Layer] | None = None,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Global context block (GCNet): attention pooling, bottleneck transform, add/scale fusion.

    Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", ICCVW
    2019 (official ``ContextBlock``, timm ``GlobalContext``): ``p = softmax_{HW}(attn(x))``
    (float32), context ``c = sum_p p * x``; each transform is ``fc2(act(norm(fc1(c))))``;
    ``out = x * gate(scale(c))`` then ``out + add(c)``.

    Args:
      x: (N, H, W, C) feature map.
      attn: layer (N, H, W, C) -> (N, H, W, 1) (the 1x1 conv giving attention logits).
      add_transform: (fc1, norm, fc2) layers mapping (N, 1, 1, C) -> (N, 1, 1, C), or None.
      scale_transform: (fc1, norm, fc2) layers, same shapes, or None.
      act: activation between the norm and fc2 (name or callable).
      gate: gate of the scale fusion (name or callable).
      return_maps: also return the attention maps (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"context_weights"`` (N, H, W, 1), the attention-pooling softmax ``p`` (float32 or
      wider; sums to 1 over H and W), and ``"channel_weights"`` (N, 1, 1, C), the scale
      fusion's gate (with ``scale_transform``), and ``"channel_add"`` (N, 1, 1, C), the term
      the add fusion adds (with ``add_transform``).
    """
    fn = "global_context"
    check_nhwc(fn, "x", x)
    if add_transform is None and scale_transform is None:
        raise fail(fn, "add_transform / scale_transform", "at least one given", "both None")
    act_fn, gate_fn = get_act(act), get_gate(gate)
    for arg, t in (("add_transform", add_transform), ("scale_transform", scale_transform)):
        if t is not None and len(t) != 3:
            raise fail(fn, arg, "three layers (fc1, norm, fc2)", f"{len(t)} layers")
    n, h, w, c = x.shape
    logits = attn(x)
    check_layer_shape(fn, "attn", logits, (n, h, w, 1))
    p = jax.nn.softmax(logits.reshape(n, h * w).astype(acc_dtype(x)), axis=-1)
    context = jnp.einsum("np,npc->nc", p, x.reshape(n, h * w, c).astype(p.dtype),
                         precision=jax.lax.Precision.HIGHEST)
    context = context.astype(x.dtype).reshape(n, 1, 1, c)

    def transform(layers):
        fc1, norm, fc2 = layers
        return fc2(act_fn(norm(fc1(context))))

    out, maps = x, {}
    if scale_transform is not None:
        maps["channel_weights"] = gate_fn(transform(scale_transform))
        out = rescale(out, maps["channel_weights"])
    if add_transform is not None:
        maps["channel_add"] = transform(add_transform)
        out = out + maps["channel_add"].astype(x.dtype)
    if return_maps:
        return out, {"context_weights": p.reshape(n, h, w, 1), **maps}
    return out


@batch_dims(x=NHWC)
def second_order_channel(
    x: jax.Array,
    *,
    reduce: Layer,
    expand: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    iterations: int = 5,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Second-order channel attention (SOCA): covariance pooling -> sqrt -> SE-style gate.

    Dai et al., "Second-order Attention Network for Single Image Super-Resolution", CVPR 2019,
    Sec. 3.3 (official ``SOCA``): ``Y = sqrtm(cov(x))`` by Newton-Schulz (``iterations`` steps,
    5 officially), descriptor ``z = mean over rows of Y`` (N, C), then
    ``gate(expand(act(reduce(z))))`` rescales ``x``. Covariance and square root are computed in
    float32 for bf16/fp16 input.

    Args:
      x: (N, H, W, C) feature map.
      reduce: layer mapping (N, 1, 1, C) -> (N, 1, 1, R).
      expand: layer mapping (N, 1, 1, R) -> (N, 1, 1, C).
      act: hidden activation (name or callable).
      gate: gate (name or callable).
      iterations: Newton-Schulz steps (>= 1).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, 1, 1, C), the gate that multiplies ``x``.
    """
    fn = "second_order_channel"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "iterations", iterations)
    act_fn, gate_fn = get_act(act), get_gate(gate)
    n, c = x.shape[0], x.shape[-1]
    root = newton_schulz_sqrt(covariance_pool(x), iterations=iterations)
    z = jnp.mean(root, axis=1).astype(x.dtype).reshape(n, 1, 1, c)
    w = gate_fn(expand(act_fn(reduce(z))))
    y = rescale(x, w)
    return (y, {"channel_weights": w}) if return_maps else y
