"""Fine-tuning: start a run from pretrained weights (``init_from``), train only the head
(``freeze_backbone``).

``init_from`` names a file of weights for the run's model: a timm state dict (``.safetensors``,
or ``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``) of a timm zoo name, or
an attention-jax variables file (``attention-jax convert`` / ``interop.save_variables``; any
zoo name). The model is built for the dataset (its classes and image channels) and the file's
tensors fill it strictly: every parameter and BatchNorm statistic must come from the file with
the model's shape, every tensor of the file must be used. Two parts may differ, and say so in
one line each:

- the head (the parameters whose shape follows ``num_classes``: ``fc`` in the ResNets,
  ``head`` in ``cnn``): a head of another width (timm's 1000 ImageNet classes) or none is
  replaced by the run's freshly initialised one; a head of the run's width is loaded.
- the stem (the first convolution, whose kernel follows the image channels): a kernel for
  other input channels is adapted as timm's ``adapt_input_conv`` does when timm loads RGB
  weights for ``in_chans != 3``: summed over its input channels for one channel (a grey image
  then gives the response of the RGB image with that grey in each channel), else tiled and
  scaled by ``C_file / C``.

Which parameters are the head and the stem is found from the model itself: the paths whose
shapes change when the model is built for one more class, or one more input channel.

``freeze_backbone`` trains the head alone: the optimiser is ``optax.multi_transform`` with
``set_to_zero`` on every other parameter (so clipping, weight decay and Adam see the head's
gradients only), and the model runs in eval mode during training, so BatchNorm normalises with
the file's running statistics and never updates them (timm's ``FrozenBatchNorm2d``, Keras's
``training=False`` for a frozen base); dropout is off too. The frozen parameters and
statistics stay bit-identical to the file's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from attention_jax._extras import require
from attention_jax._validation import fail

__all__ = ["ModelParts", "InitFrom", "model_parts", "check_init_from", "read_init_from",
           "apply_init_from", "adapt_input_conv", "freeze_backbone", "say_init_from",
           "INIT_FROM_EXTENSIONS"]

INIT_FROM_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin")
_COLLECTIONS = ("params", "batch_stats")
_WHAT = ("a timm state dict (.safetensors, .pth, .pt, .bin) or an attention-jax variables "
         "file (attention-jax convert)")

Path = tuple[str, ...]  # (collection, *modules, leaf), e.g. ("params", "fc", "kernel")


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _key(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flatten(variables: Mapping[str, Any]) -> dict[Path, Any]:
    """``{(collection, *names): leaf}`` of the ``params`` and ``batch_stats`` collections."""
    out = {}
    for coll in _COLLECTIONS:
        for kp, leaf in jax.tree_util.tree_leaves_with_path(dict(variables.get(coll) or {})):
            out[(coll, *(_key(k) for k in kp))] = leaf
    return out


def _unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {coll: {} for coll in _COLLECTIONS}
    for path, leaf in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return out


def _name(path: Path) -> str:
    return "/".join(path)


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """Which variables of a model are its head and its stem.

    Attributes:
      head: paths ``(collection, *names, leaf)`` whose shape follows ``num_classes``.
      stem: paths whose shape follows the number of input channels.
    """

    head: frozenset[Path]
    stem: frozenset[Path]

    def head_name(self) -> str:
        """The head's module path, e.g. ``"fc"`` (the common prefix of its parameters)."""
        names = [p[1:-1] for p in self.head] or [("head",)]
        prefix = names[0]
        for n in names[1:]:
            k = 0
            while k < min(len(prefix), len(n)) and prefix[k] == n[k]:
                k += 1
            prefix = prefix[:k]
        return "/".join(prefix) or "head"


def model_parts(abstract_of: Callable[[int, tuple[int, ...]], Mapping[str, Any]],
                num_classes: int, input_shape: tuple[int, ...]) -> ModelParts:
    """Find a model's head and stem by building it (abstractly) for other widths.

    Args:
      abstract_of: ``(num_classes, input_shape (H, W, C)) -> variables`` of the model built
        for them (``{"params", "batch_stats"}`` of ``jax.ShapeDtypeStruct``, e.g. from
        ``jax.eval_shape``).
      num_classes: the run's classes.
      input_shape: the run's (H, W, C).

    Returns:
      ``ModelParts``: the paths whose shapes change with one more class (head) and one more
      input channel (stem).
    """
    shapes = lambda v: {p: tuple(a.shape) for p, a in _flatten(v).items()}  # noqa: E731
    base = shapes(abstract_of(num_classes, tuple(input_shape)))
    wider = shapes(abstract_of(num_classes + 1, tuple(input_shape)))
    deeper = shapes(abstract_of(num_classes, (*input_shape[:-1], input_shape[-1] + 1)))
    return ModelParts(frozenset(p for p in base if wider.get(p) != base[p]),
                      frozenset(p for p in base if deeper.get(p) != base[p]))


def adapt_input_conv(kernel: Any, in_channels: int) -> np.ndarray:
    """A first convolution's kernel for another number of input channels, as timm adapts
    pretrained RGB stems (``timm.models._manipulate.adapt_input_conv``).

    Args:
      kernel: (KH, KW, C_file, O) kernel (HWIO).
      in_channels: the channels wanted, C >= 1.

    Returns:
      (KH, KW, C, O) kernel of the input's dtype: for C = 1 the sum over the file's input
      channels; otherwise the file's channels tiled to C and scaled by ``C_file / C``
      (C = C_file: unchanged).
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise fail("adapt_input_conv", "kernel", "a rank-4 (KH, KW, C, O) kernel",
                   f"shape {kernel.shape}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise fail("adapt_input_conv", "in_channels", "an integer >= 1", repr(in_channels))
    base = kernel.shape[2]
    if in_channels == base:
        return kernel
    k = kernel.astype(np.float32)
    if in_channels == 1:
        out = k.sum(axis=2, keepdims=True)
    else:
        out = np.tile(k, (1, 1, math.ceil(in_channels / base), 1))[:, :, :in_channels]
        out = out * np.float32(base / float(in_channels))
    return out.astype(kernel.dtype)


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """What a run takes from its ``init_from`` file.

    Attributes:
      path: the file.
      source: ``"timm state dict"`` or ``"attention-jax variables"``.
      values: ``{path: numpy array}`` for every variable loaded (stem adapted), in the model's
        dtypes; the variables not listed (the head, when replaced) keep their initialisation.
      notes: the lines said about it (head replaced or loaded, stem adapted).
    """

    path: str
    source: str
    values: dict[Path, np.ndarray]
    notes: tuple[str, ...]


def check_init_from(path: str | os.PathLike) -> str:
    """The ``init_from`` path, if it names an existing file with a known extension.

    Args:
      path: the file.

    Returns:
      ``os.fspath(path)``.

    Raises:
      ValueError: ``"train: init_from must be ..."`` naming what was expected.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise fail("train", "init_from", f"an existing file ({_WHAT})", repr(path))
    if os.path.splitext(path)[1].lower() not in INIT_FROM_EXTENSIONS:
        raise fail("train", "init_from", f"{_WHAT}, named *{', *'.join(INIT_FROM_EXTENSIONS)}",
                   repr(path))
    return path


def _safetensors_format(path: str) -> str | None:
    st = require("safetensors", "weights", "reading .safetensors files")
    try:
        with st.safe_open(path, framework="np") as f:
            return (f.metadata() or {}).get("format")
    except Exception as err:  # not a safetensors file at all
        raise fail("train", "init_from", _WHAT, f"{path!r}, which safetensors cannot read "
                   f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def _read_timm(path: str, model: str, parts: ModelParts,
               overrides: Mapping[str, Any]) -> dict[Path, Any]:
    from attention_jax.interop.timm import (
        load_state_dict_file,
        load_timm_state_dict,
        timm_key_map,
        timm_model_names,
    )

    if model not in timm_model_names():
        raise fail("train", "init_from", f"an attention-jax variables file for model {model!r} "
                   f"(timm state dicts fit timm's names only: "
                   f"{', '.join(timm_model_names())})", f"{path!r}, a timm state dict")
    try:
        state = load_state_dict_file(path)
        keys = timm_key_map(model, num_classes=1, **overrides)
        fc = keys.get("params/fc/kernel")
        num_classes = int(np.shape(state[fc])[0]) if fc in state else None
        in_channels = [int(np.shape(state[keys[_name(p)]])[1]) for p in sorted(parts.stem)
                       if p[0] == "params" and _name(p) in keys and keys[_name(p)] in state
                       and np.ndim(state[keys[_name(p)]]) == 4]
        extra = {"in_channels": in_channels[0]} if in_channels else {}
        variables = load_timm_state_dict(model, state, strict=True, num_classes=num_classes,
                                         **extra, **overrides)
    except ValueError as err:
        raise fail("train", "init_from", f"a timm state dict of {model!r}",
                   f"{path!r}: {err}") from err
    return _flatten(variables)


def _read_ours(path: str, model: str) -> dict[Path, Any]:
    from attention_jax.interop.timm import load_variables

    try:
        variables, meta = load_variables(path)
    except ValueError as err:
        raise fail("train", "init_from", f"variables of {model!r}", f"{path!r}: {err}") from err
    recorded = meta.get("model")
    if recorded is not None and recorded != model:
        raise fail("train", "init_from", f"variables of model {model!r}",
                   f"{path!r}, holding variables of {recorded!r}")
    return _flatten(variables)


def _listing(items: list[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def read_init_from(
    path: str | os.PathLike,
    *,
    model: str,
    abstract: Mapping[str, Any],
    parts: ModelParts,
    overrides: Mapping[str, Any] | None = None,
) -> InitFrom:
    """Read an ``init_from`` file and match it to the run's model (nothing is built or run).

    Args:
      path: a timm state dict (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) of a timm zoo
        name, or an attention-jax variables file (``.safetensors`` whose metadata says
        ``format: attention-jax``) of any zoo name.
      model: the zoo name of the run's model.
      abstract: the model's variables as built for the run (``{"params", "batch_stats"}`` of
        arrays or ``jax.ShapeDtypeStruct``): the shapes and dtypes to fill.
      parts: the model's head and stem (``model_parts``).
      overrides: architecture fields the model was built with beyond its name (for a timm
        file's key map), e.g. ``{"layers": (1, 1, 1, 1)}`` or ``{"attention": "se"}``.

    Returns:
      ``InitFrom`` (the loaded values and the notes to print).

    Raises:
      ValueError: ``"train: init_from must be ..."``: no such file, an unknown extension, an
        unreadable file, a timm file for a model without timm weights, another model's
        variables, or tensors that do not fit (the message lists missing and unexpected keys
        and wrong shapes, expected and found).
    """
    fn = "train"
    path = check_init_from(path)
    ext = os.path.splitext(path)[1].lower()
    ours = ext == ".safetensors" and _safetensors_format(path) == "attention-jax"
    if ours:
        have = _read_ours(path, model)
    else:
        have = _read_timm(path, model, parts, dict(overrides or {}))
    want = _flatten(abstract)
    values: dict[Path, np.ndarray] = {}
    missing, wrong, notes = [], [], []
    head = sorted(p for p in want if p in parts.head)
    head_loaded = bool(head) and all(
        p in have and tuple(np.shape(have[p])) == tuple(want[p].shape) for p in head)
    for p, w in want.items():
        dtype, shape = np.dtype(w.dtype), tuple(w.shape)
        if p in parts.head:
            if head_loaded:
                values[p] = np.asarray(have[p]).astype(dtype)
            continue
        if p not in have:
            missing.append(f"{_name(p)} (expected {shape})")
            continue
        got = tuple(np.shape(have[p]))
        if got == shape:
            values[p] = np.asarray(have[p]).astype(dtype)
        elif (p in parts.stem and len(got) == len(shape) == 4
              and got[:2] + got[3:] == shape[:2] + shape[3:]):
            values[p] = adapt_input_conv(np.asarray(have[p]), shape[2]).astype(dtype)
            how = ("summed over the file's channels" if shape[2] == 1
                   else f"tiled and scaled by {got[2]}/{shape[2]}")
            notes.append(f"stem {_name(p[1:-1])} {got[2]} -> {shape[2]} input channels: "
                         f"kernel adapted as timm's adapt_input_conv ({how})")
        else:
            wrong.append(f"{_name(p)}: expected {shape}, got {got}")
    unexpected = [f"{_name(p)} (shape {tuple(np.shape(have[p]))})" for p in have
                  if p not in want]
    if missing or wrong or unexpected:
        found = "; ".join(f"{what} {_listing(items)}" for what, items in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if items)
        raise fail(fn, "init_from", f"the weights of {model!r} as built for this run (only "
                   "the head and the stem's input channels may differ)", f"{path!r} with {found}")
    if head:
        width = next(iter(want[p].shape[-1] for p in head))
        name = parts.head_name()
        old = [np.shape(have[p])[-1] for p in head if p in have]
        if head_loaded:
            notes.insert(0, f"head {name} ({width} classes) loaded from the file")
        elif old:
            notes.insert(0, f"head {name} {old[0]} -> {width} classes: initialised fresh")
        else:
            notes.insert(0, f"head {name} not in the file -> {width} classes: initialised fresh")
    return InitFrom(path, "attention-jax variables" if ours else "timm state dict", values,
                    tuple(notes))


def apply_init_from(variables: Mapping[str, Any], init: InitFrom) -> dict[str, Any]:
    """The run's initial variables: the file's values over a fresh initialisation.

    Args:
      variables: the fresh ``{"params", "batch_stats"}``.
      init: ``read_init_from``'s result for this model.

    Returns:
      ``{"params", "batch_stats"}``: every variable from the file, except those ``init``
      leaves out (a replaced head), which keep their fresh values.
    """
    flat = _flatten(variables)
    return _unflatten({p: init.values.get(p, v) for p, v in flat.items()})


def freeze_backbone(tx: optax.GradientTransformation,
                    parts: ModelParts) -> optax.GradientTransformation:
    """An optimiser that updates the head only: ``tx`` on the head's parameters, zero updates
    (``optax.set_to_zero``) on every other one.

    Args:
      tx: the run's optimiser (clipping, weight decay and its state see the head alone).
      parts: the model's head (``model_parts``).

    Returns:
      The ``optax.multi_transform``.
    """
    head = {p[1:] for p in parts.head if p[0] == "params"}
    if not head:
        raise fail("train", "freeze_backbone", "used with a model whose classifier head "
                   "depends on num_classes", "a model without one")

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda kp, _: "head" if tuple(_key(k) for k in kp) in head else "frozen", params)

    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)


def say_init_from(init: InitFrom) -> None:
    """Print what was loaded (stderr, process 0): one line for the file, one per note."""
    _say(f"train: init_from {init.path}: {init.source}, {len(init.values)} arrays loaded")
    for note in init.notes:
        _say(f"train: init_from: {note}")
