"""timm weights in and out: state dicts of timm's attention ResNets <-> our variables.

``load_timm_state_dict(name, state_dict)`` turns the ``state_dict()`` of
``timm.create_model(name)`` (PyTorch layout, any mapping of arrays or tensors) into the linen
variables ``{"params", "batch_stats"}`` of ``attention_jax.models.create_model(name)``; nnx
models take them through ``load_linen_variables``. ``to_timm_state_dict`` is its exact inverse.
Conv kernels go OIHW <-> HWIO, linear weights are transposed, ECA's Conv1d weight (1, 1, k) is
our (k, 1, 1) kernel, BatchNorm's ``weight``/``bias``/``running_mean``/``running_var`` are our
``scale``/``bias`` params and ``mean``/``var`` batch stats; ``num_batches_tracked`` is dropped
(timm's models load a dict without it).

Files: ``load_state_dict_file`` reads ``.safetensors`` with the safetensors package's numpy API
(no torch, no pickle) and ``.pth``/``.pt``/``.bin`` only through
``torch.load(..., weights_only=True)`` when torch is installed; ``save_state_dict_file`` writes
``.safetensors``. ``save_variables``/``load_variables`` store our own variables (flax paths as
keys, the model name in the metadata): the checkpoint ``attention-jax convert`` writes.
Nothing here downloads.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._extras import require
from attention_jax._validation import check_choice, fail

__all__ = [
    "IncompatibleKeys",
    "timm_model_names",
    "timm_key_map",
    "load_timm_state_dict",
    "to_timm_state_dict",
    "load_state_dict_file",
    "save_state_dict_file",
    "save_variables",
    "load_variables",
]

_COLLECTIONS = ("params", "batch_stats")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_LEAF_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
_FORMAT = "attention-jax"


class IncompatibleKeys(NamedTuple):
    """What a non-strict load did not match, as ``torch.nn.Module.load_state_dict`` reports.

    Fields: ``missing_keys`` (timm keys the model needs that the state dict lacks: those
    parameters keep their initial values) and ``unexpected_keys`` (state-dict keys no parameter
    uses), both sorted lists of strings.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Entry(NamedTuple):
    path: tuple[str, ...]  # (collection, *modules, leaf)
    key: str  # timm state-dict key
    torch_shape: tuple[int, ...]
    dtype: Any


def timm_model_names() -> list[str]:
    """The zoo names whose weights are timm's (``load_timm_state_dict`` accepts them).

    Returns:
      Sorted list of names.
    """
    from attention_jax.models.zoo import list_models, model_info

    return [n for n in list_models() if model_info(n).timm_layout is not None]


# --- key mapping -------------------------------------------------------------------------------

def kernel_to_torch(a: Any) -> np.ndarray:
    """Flax kernel layout -> PyTorch weight layout, by rank: conv2d ``(kh, kw, in/g, out)`` ->
    ``(out, in/g, kh, kw)``, conv1d ``(k, in/g, out)`` -> ``(out, in/g, k)``, dense
    ``(in, out)`` -> ``(out, in)``; other ranks (vectors) unchanged. No torch needed."""
    a = np.asarray(a)
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 3:
        return a.transpose(2, 1, 0)
    if a.ndim == 2:
        return a.T
    return a


def kernel_from_torch(a: Any) -> np.ndarray:
    """PyTorch's weight layout -> Flax's, by rank (the inverse of ``kernel_to_torch``)."""
    a = np.asarray(a)
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 3:
        return a.transpose(2, 1, 0)
    if a.ndim == 2:
        return a.T
    return a


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(kernel_to_torch(np.empty(shape, np.uint8)).shape)


def _jax_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(kernel_from_torch(np.empty(torch_shape, np.uint8)).shape)


# Names inside a mechanism (ours -> timm's), per mechanism kind, in timm's module order.
_INNER: dict[str, list[tuple[str, str]]] = {
    "se": [(r"fc1", "fc1"), (r"fc2", "fc2")],
    "eca": [(r"conv", "conv")],
    "gc": [(r"conv_attn", "conv_attn"), (r"add_fc1", "mlp_add.fc1"),
           (r"add_norm", "mlp_add.norm"), (r"add_fc2", "mlp_add.fc2"),
           (r"scale_fc1", "mlp_scale.fc1"), (r"scale_norm", "mlp_scale.norm"),
           (r"scale_fc2", "mlp_scale.fc2")],
    "sk": [(r"conv(\d+)", r"paths.\1.conv"), (r"bn(\d+)", r"paths.\1.bn"),
           (r"fc_reduce", "attn.fc_reduce"), (r"fc_bn", "attn.bn"),
           (r"fc_select", "attn.fc_select")],
    "splat": [(r"conv", "conv"), (r"bn0", "bn0"), (r"fc1", "fc1"), (r"bn1", "bn1"),
              (r"fc2", "fc2")],
}


def _inner_rank(kind: str, name: str) -> tuple[int, int, int]:
    """Where an inner layer sits in timm's module order: numbered layers (SK's paths) first,
    by number, then the others in ``_INNER`` order."""
    for i, (pattern, _) in enumerate(_INNER.get(kind, [])):
        m = re.fullmatch(pattern, name)
        if m:
            digits = [int(g) for g in m.groups() if g is not None and g.isdigit()]
            return (0, digits[0], i) if digits else (1, 0, i)
    return (2, 0, 0)


def _inner(kind: str, name: str) -> str:
    for pattern, repl in _INNER[kind]:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise AssertionError(f"no timm name for layer {name!r} of a {kind!r} module")


def _module_keys(layout: str, plan: Any) -> dict[str, tuple[str, str | None]]:
    """Our top-level and block-level module names -> (timm prefix, inner kind or None)."""
    from attention_jax.models import resnet_core as core

    stem_names: dict[str, str]
    if layout == "resnet":
        deep = any(n == "stem_conv1" for n, _ in plan.stem_layers)
        stem_names = {"stem_conv1": "conv1.0", "stem_bn1": "conv1.1", "stem_conv2": "conv1.3",
                      "stem_bn2": "conv1.4", "conv1": "conv1.6" if deep else "conv1",
                      "bn1": "bn1", "fc": "fc"}
    else:
        stem_names = {"stem_conv1": "stem.conv1.conv", "stem_bn1": "stem.conv1.bn",
                      "stem_conv2": "stem.conv2.conv", "stem_bn2": "stem.conv2.bn",
                      "conv1": "stem.conv3.conv", "bn1": "stem.conv3.bn", "fc": "head.fc"}
    # In forward order (the order of the exported dict): stem, blocks, classifier.
    out = {n: (stem_names[n], None) for n, _ in plan.stem_layers}
    for name, bp in plan.blocks:
        s, b = (int(v) for v in re.fullmatch(r"layer(\d+)_(\d+)", name).groups())
        prefix = f"layer{s}.{b}" if layout == "resnet" else f"stages.{s - 1}.{b}"
        layers = list(bp.layers)
        if layout == "byobnet":  # timm's byobnet blocks register the shortcut first
            layers.sort(key=lambda item: not item[0].startswith("downsample"))
        for lname, spec in layers:
            key = f"{name}/{lname}"
            kind = None
            if isinstance(spec, core.Spatial):
                kind = spec.kind
            elif isinstance(spec, core.Attention):
                kind = spec.name
            if layout == "byobnet":
                target = {"conv1": "conv1_1x1.conv", "bn1": "conv1_1x1.bn",
                          "conv2": "conv2_kxk.conv", "bn2": "conv2_kxk.bn",
                          "conv3": "conv3_1x1.conv", "bn3": "conv3_1x1.bn",
                          "attn": "attn" if bp.attention_position == "mid" else "attn_last",
                          "downsample_conv": "shortcut.conv",
                          "downsample_bn": "shortcut.bn"}[lname]
                if not bp.bottleneck:
                    target = target.replace("conv1_1x1", "conv1_kxk")
            elif lname == "attn":
                target = "se"
            elif lname.startswith("downsample"):
                i = (0 if lname.endswith("conv") else 1) + (bp.shortcut == "avg")
                target = f"downsample.{i}"
            elif bp.spatial_conv == "sk" and kind is None:  # timm's sknet: ConvNormAct layers
                target = re.sub(r"(conv|bn)(\d)", lambda m: f"conv{m[2]}." + (
                    "conv" if m[1] == "conv" else "bn"), lname)
            else:
                target = lname
            out[key] = (f"{prefix}.{target}", kind)
    out["fc"] = (stem_names["fc"], None)
    return out


def _model_and_plan(fn: str, name: str, num_classes: int | None, overrides: Mapping[str, Any]):
    from attention_jax.models import resnet_core as core
    from attention_jax.models.zoo import create_model, model_info

    check_choice(fn, "name", name, timm_model_names())
    info = model_info(name)
    attention = {**info.architecture, **overrides}.get("attention")
    if attention not in (None, "se", "eca", "gc"):
        raise fail(fn, "attention", "None or a mechanism timm's ResNets hold weights for ('se', "
                   "'eca', 'gc')", repr(attention))
    model = create_model(name, num_classes=num_classes, **overrides)
    plan = core.resnet_plan(fn, **{**info.architecture, **overrides}, num_classes=num_classes)
    return info, model, plan


def _abstract_variables(model: Any, plan: Any) -> dict[str, Any]:
    x = jax.ShapeDtypeStruct((1, 64, 64, plan.in_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


_ENTRIES_KEPT = 32
_entries_cache: collections.OrderedDict[Any, tuple[tuple[_Entry, ...], Any, Any]] = (
    collections.OrderedDict())


def _frozen(value: Any) -> Any:
    """A hashable stand-in for an override: sequences as tuples, each value with its type (so
    ``True``, ``1`` and ``1.0``, which validate differently, are different keys)."""
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple(_frozen(v) for v in value)
    return type(value).__name__, value


def _entries(fn: str, name: str, num_classes: int | None,
             overrides: Mapping[str, Any]) -> tuple[tuple[_Entry, ...], Any, Any]:
    """The model's variables with their timm keys, in forward order (timm's module order).

    Kept for the last ``_ENTRIES_KEPT`` architectures: finding them traces the model's ``init``
    (about a second for a ResNet-101 on a 2-core CPU), and a loaded checkpoint is often
    exported again or compared (load, export, load: three calls for one model).
    """
    try:
        key = (name, num_classes, tuple(sorted((k, _frozen(v)) for k, v in overrides.items())))
        hash(key)
    except TypeError:  # an unhashable override: computed each time
        key = None
    if key is not None and key in _entries_cache:
        _entries_cache.move_to_end(key)
        return _entries_cache[key]
    result = _find_entries(fn, name, num_classes, overrides)
    if key is not None:
        _entries_cache[key] = result
        while len(_entries_cache) > _ENTRIES_KEPT:
            _entries_cache.popitem(last=False)
    return result


def _find_entries(fn: str, name: str, num_classes: int | None,
                  overrides: Mapping[str, Any]) -> tuple[tuple[_Entry, ...], Any, Any]:
    info, model, plan = _model_and_plan(fn, name, num_classes, overrides)
    modules = _module_keys(info.timm_layout, plan)
    position = {m: i for i, m in enumerate(modules)}

    abstract = _abstract_variables(model, plan)
    entries, ranks = [], {}
    for coll in _COLLECTIONS:
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.get(coll, {})):
            names = tuple(str(p.key) for p in path)
            mods, leaf_name = names[:-1], names[-1]
            block = mods[0].startswith("layer")
            module = f"{mods[0]}/{mods[1]}" if block else mods[0]
            prefix, kind = modules[module]
            inner_names = mods[2:] if block else mods[1:]
            inner = [_inner(kind, m) for m in inner_names]
            key = ".".join([prefix, *inner, _LEAF[leaf_name]])
            entries.append(_Entry((coll, *names), key, _torch_shape(leaf.shape), leaf.dtype))
            ranks[key] = (position[module], [_inner_rank(kind, m) for m in inner_names],
                          _LEAF_RANK[_LEAF[leaf_name]])
    entries.sort(key=lambda e: ranks[e.key])
    return tuple(entries), model, plan


def timm_key_map(name: str, *, num_classes: int | None = 1000,
                 **overrides: Any) -> dict[str, str]:
    """Which timm state-dict key each of our variables corresponds to.

    Args:
      name: a timm zoo name (``timm_model_names()``).
      num_classes: classes of the classifier (None: no classifier, timm's ``num_classes=0``).
      **overrides: architecture fields overriding the name's (as for ``create_model``), e.g.
        ``layers=(1, 1, 1, 1)`` for timm's ``create_model(name, layers=[1, 1, 1, 1])``.

    Returns:
      ``{"params/layer1_0/conv1/kernel": "layer1.0.conv1.weight", ...}`` (our collection and
      path joined by ``/``), in forward order.
    """
    entries, _, _ = _entries("timm_key_map", name, num_classes, overrides)
    return {"/".join(e.path): e.key for e in entries}


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def load_timm_state_dict(
    name: str,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    num_classes: int | None = 1000,
    init_variables: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any] | tuple[dict[str, Any], IncompatibleKeys]:
    """Linen variables of ``create_model(name)`` from a timm state dict.

    Args:
      name: a timm zoo name (``timm_model_names()``).
      state_dict: ``timm.create_model(name).state_dict()``, or the arrays of a checkpoint file
        (``load_state_dict_file``): key -> numpy array or torch tensor, PyTorch layout.
        ``*.num_batches_tracked`` entries are ignored.
      strict: every model tensor must be present and every state-dict tensor used, with the
        model's shape; else ``ValueError`` naming the offending keys with expected and received
        shapes. ``strict=False`` keeps the initial values of missing parameters and reports
        missing/unexpected keys (a wrong shape is still an error, as in torch).
      num_classes: classes of the checkpoint's classifier (None: no ``fc``, timm's
        ``num_classes=0``).
      init_variables: with ``strict=False``, the variables missing tensors are taken from
        (default: ``model.init`` with key 0).
      **overrides: architecture fields overriding the name's (as for ``create_model``; e.g.
        ``layers``), for a checkpoint of a timm model built with the same overrides.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (jax arrays of the model's dtypes); with
      ``strict=False`` the pair ``(variables, IncompatibleKeys(missing, unexpected))``.
    """
    fn = "load_timm_state_dict"
    if not isinstance(state_dict, Mapping):
        raise fail(fn, "state_dict", "a mapping of key -> array", type(state_dict).__name__)
    entries, model, plan = _entries(fn, name, num_classes, overrides)
    given = {k: v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")}
    wanted = {e.key for e in entries}
    missing = sorted(e.key for e in entries if e.key not in given)
    unexpected = sorted(k for k in given if k not in wanted)
    arrays, wrong = {}, []
    for e in entries:
        if e.key in given:
            a = _as_numpy(given[e.key])
            if tuple(a.shape) != e.torch_shape:
                wrong.append(f"{e.key}: expected {e.torch_shape}, got {tuple(a.shape)}")
            arrays[e.key] = a
    shape_of = {e.key: e.torch_shape for e in entries}
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append("missing keys " + _listing(
                [f"{k} (expected {shape_of[k]})" for k in missing]))
        if unexpected:
            parts.append("unexpected keys " + _listing(
                [f"{k} (shape {tuple(np.shape(given[k]))})" for k in unexpected]))
        if wrong:
            parts.append("wrong shapes " + _listing(wrong))
        raise fail(fn, "state_dict", f"the tensors of timm's {name!r} (num_classes="
                   f"{num_classes}) with their shapes", "; ".join(parts))
    variables: dict[str, Any] = {}
    if missing:
        base = init_variables
        if base is None:
            x = jnp.zeros((1, 64, 64, plan.in_channels), jnp.float32)
            base = jax.jit(model.init)(jax.random.key(0), x)
        for e in entries:
            if e.key not in arrays:
                node = base
                for p in e.path:
                    node = node[p]
                _set(variables, e.path, jnp.asarray(node))
    for e in entries:
        if e.key in arrays:
            _set(variables, e.path, jnp.asarray(kernel_from_torch(arrays[e.key]).astype(e.dtype)))
    if strict:
        return variables
    return variables, IncompatibleKeys(missing, unexpected)


def _linen_variables(variables: Any) -> dict[str, Any]:
    from flax import nnx

    from attention_jax.interop import nnx_to_linen_variables

    if isinstance(variables, nnx.Module):
        return nnx_to_linen_variables(variables)
    return {k: v for k, v in dict(variables).items() if k in _COLLECTIONS}


def to_timm_state_dict(variables: Any, name: str, **overrides: Any) -> dict[str, np.ndarray]:
    """The timm state dict of our variables: the exact inverse of ``load_timm_state_dict``.

    Args:
      variables: linen ``{"params", "batch_stats"}`` of ``create_model(name, ...)``, or the
        nnx model itself. The classifier width (or its absence) is read from them.
      name: a timm zoo name (``timm_model_names()``).
      **overrides: architecture fields overriding the name's, as given to ``create_model``.

    Returns:
      ``{timm key: numpy array}`` in PyTorch layout (contiguous, the variables' dtypes), in
      forward order; ``timm.create_model(name).load_state_dict`` takes it (strict).
    """
    fn = "to_timm_state_dict"
    tree = _linen_variables(variables)
    fc = tree.get("params", {}).get("fc")
    num_classes = None if fc is None else int(np.shape(fc["kernel"])[-1])
    entries, _, _ = _entries(fn, name, num_classes, overrides)
    have = {tuple(str(p.key) for p in path): leaf for coll in _COLLECTIONS
            for path, leaf in jax.tree_util.tree_leaves_with_path({coll: tree.get(coll, {})})}
    want = {e.path: e for e in entries}
    missing = sorted("/".join(p) for p in want if p not in have)
    extra = sorted("/".join(p) for p in have if p not in want)
    wrong = [f"{'/'.join(p)}: expected {_jax_shape(e.torch_shape)}, got "
             f"{tuple(np.shape(have[p]))}" for p, e in want.items()
             if p in have and tuple(np.shape(have[p])) != _jax_shape(e.torch_shape)]
    if missing or extra or wrong:
        parts = [f"{what} {_listing(items)}" for what, items in
                 (("missing", missing), ("unexpected", extra), ("wrong shapes", wrong)) if items]
        raise fail(fn, "variables", f"the variables of create_model({name!r}, num_classes="
                   f"{num_classes})", "; ".join(parts))
    return {e.key: np.array(kernel_to_torch(np.asarray(have[e.path])), order="C", copy=True)
            for e in entries}


# --- files -------------------------------------------------------------------------------------

def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint's tensors: ``.safetensors`` (numpy, no torch), ``.pth``/``.pt``/``.bin``
    (``torch.load(weights_only=True)``, needs torch).

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` (training checkpoints) is
    unwrapped, and a ``module.`` prefix on every key (DataParallel) is removed.

    Args:
      path: the file.

    Returns:
      ``{key: numpy array}`` (bfloat16 tensors of a ``.pth`` become float32).
    """
    fn = "load_state_dict_file"
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    check_choice(fn, "path's extension", ext, (".safetensors", ".pth", ".pt", ".bin"))
    if not os.path.isfile(path):
        raise fail(fn, "path", "an existing file", repr(path))
    if ext == ".safetensors":
        st = require("safetensors.numpy", "weights", "reading .safetensors files")
        return dict(st.load_file(path))
    try:
        import torch
    except ImportError as err:
        raise fail(fn, "path", "a .safetensors file when torch is not installed (PyTorch "
                   "pickles are read only by torch.load(weights_only=True))", repr(path)) from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise fail(fn, "path", "a file holding a state dict (key -> tensor)",
                   f"{path!r} holding {type(obj).__name__}")
    out = {str(k): _as_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def save_state_dict_file(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a state dict as ``.safetensors`` (loadable by ``safetensors.torch.load_file``).

    Args:
      state_dict: key -> array (e.g. ``to_timm_state_dict(...)``).
      path: the file to write (``.safetensors``).
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise fail("save_state_dict_file", "path", "a .safetensors file name", repr(path))
    save_file({k: np.ascontiguousarray(_as_numpy(v)) for k, v in state_dict.items()}, path,
              metadata={"format": "pt"})


def save_variables(variables: Any, path: str | os.PathLike, *, model: str | None = None,
                   num_classes: int | None = None) -> None:
    """Write our variables (linen dict or nnx model) as one ``.safetensors`` file.

    Keys are the flax paths (``params/layer1_0/conv1/kernel``); the metadata names the format
    and, if given, the zoo model and its classes, so a run can start from it.

    Args:
      variables: linen ``{"params", "batch_stats"}`` or an nnx model.
      path: the file to write (``.safetensors``).
      model: the zoo name the variables belong to, or None.
      num_classes: the classifier width, or None.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise fail("save_variables", "path", "a .safetensors file name", repr(path))
    tree = _linen_variables(variables)
    flat = {"/".join(str(p.key) for p in kp): np.ascontiguousarray(np.asarray(v))
            for kp, v in jax.tree_util.tree_leaves_with_path(tree)}
    meta = {"format": _FORMAT}
    if model is not None:
        meta["model"] = model
    if num_classes is not None:
        meta["num_classes"] = str(num_classes)
    save_file(flat, path, metadata=meta)


def load_variables(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a file written by ``save_variables`` / ``attention-jax convert``.

    Args:
      path: the ``.safetensors`` file.

    Returns:
      ``(variables, metadata)``: linen variables (jax arrays) and the file's metadata
      (``format``, and ``model``/``num_classes`` when recorded). Load them into an nnx model
      with ``load_linen_variables``.
    """
    from safetensors import safe_open

    fn = "load_variables"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise fail(fn, "path", "an existing file", repr(path))
    with safe_open(path, framework="np") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != _FORMAT:
            raise fail(fn, "path", f"a file written by save_variables (metadata format "
                       f"{_FORMAT!r}; a timm checkpoint loads with load_timm_state_dict)",
                       f"{path!r} with metadata {meta!r}")
        variables: dict[str, Any] = {}
        for key in f.keys():
            _set(variables, tuple(key.split("/")), jnp.asarray(f.get_tensor(key)))
    return variables, meta

