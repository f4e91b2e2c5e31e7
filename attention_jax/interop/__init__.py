"""Weights in and out: between linen and nnx, and from/to timm checkpoints.

Every mechanism's and model's linen and nnx modules use the same parameter names and shapes, so
one tree serves both: linen keeps it as ``{"params": ..., "batch_stats": ...}`` collections,
nnx as ``nnx.Param`` / ``nnx.BatchStat`` variables on the module (``load_linen_variables``,
``nnx_to_linen_variables``). ``attention_jax.interop.timm`` converts timm state dicts of the
model zoo to these variables and back, and reads/writes checkpoint files.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from attention_jax.interop.timm import (
    IncompatibleKeys,
    load_state_dict_file,
    load_timm_state_dict,
    load_variables,
    save_state_dict_file,
    save_variables,
    timm_key_map,
    timm_model_names,
    to_timm_state_dict,
)

__all__ = [
    "load_linen_variables",
    "nnx_to_linen_variables",
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

_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _merge(into: dict, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def _merge_collections(variables: dict[str, Any]) -> dict:
    """One nested dict of every leaf in the linen ``params`` and ``batch_stats`` collections."""
    merged: dict = {}
    for collection in _COLLECTIONS:
        if collection in variables:
            _merge(merged, dict(variables[collection]))
    return merged


def load_linen_variables(module: nnx.Module, variables: dict[str, Any]) -> nnx.Module:
    """Copy a linen variable dict (``params``, ``batch_stats``) into an nnx module, in place.

    Args:
      module: an nnx mechanism built with the same hyper-parameters as the linen one.
      variables: the linen ``init``/``apply`` variables.

    Returns:
      ``module`` (for chaining). Raises ``ValueError`` naming the first path that does not match.
    """
    merged = _merge_collections(variables)
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    expected = nnx.to_pure_dict(state)
    got_paths = {p for p, _ in jax.tree_util.tree_leaves_with_path(merged)}
    exp_paths = {p for p, _ in jax.tree_util.tree_leaves_with_path(expected)}
    if got_paths != exp_paths:
        missing = sorted(jax.tree_util.keystr(p) for p in exp_paths - got_paths)
        extra = sorted(jax.tree_util.keystr(p) for p in got_paths - exp_paths)
        raise ValueError(
            f"load_linen_variables: variables must hold the module's parameter tree, "
            f"got missing {missing[:5]} and unexpected {extra[:5]}"
        )
    for (path, want), (_, have) in zip(
        jax.tree_util.tree_leaves_with_path(expected),
        jax.tree_util.tree_leaves_with_path(merged),
        strict=True,
    ):
        if want.shape != have.shape:
            raise ValueError(
                f"load_linen_variables: {jax.tree_util.keystr(path)} must have shape "
                f"{tuple(want.shape)}, got {tuple(have.shape)}"
            )
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(module, state)
    return module


def nnx_to_linen_variables(module: nnx.Module) -> dict[str, Any]:
    """The linen variable dict (``params`` and, if any, ``batch_stats``) of an nnx module.

    Args:
      module: an nnx mechanism.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with plain nested dicts of arrays.
    """
    out = {}
    for collection, var_type in _COLLECTIONS.items():
        tree = nnx.to_pure_dict(nnx.state(module, var_type))
        if jax.tree_util.tree_leaves(tree) or collection == "params":
            out[collection] = tree
    return out

