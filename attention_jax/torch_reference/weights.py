"""Copy a linen variable tree into a PyTorch reference, so both sides compute one function.

The references name their submodules after our parameter paths; these helpers flatten a linen
``{"params": ..., "batch_stats": ...}`` tree into a torch state dict (``kernel`` -> ``weight``
in PyTorch's layout, BatchNorm's ``mean``/``var`` -> ``running_mean``/``running_var``) and load
it, refusing any tensor that is missing, extra or of another shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_torch", "nhwc_to_nchw", "nchw_to_nhwc", "kernel_to_torch", "merge_collections",
           "jax_to_torch_state", "load_into_torch"]

# jax leaf name -> torch parameter/buffer name
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_COLLECTIONS = ("params", "batch_stats")


def to_torch(a: Any) -> torch.Tensor:
    """A float32 torch tensor holding a copy of ``a``."""
    return torch.from_numpy(np.array(a, dtype=np.float32))


def nhwc_to_nchw(a: Any) -> torch.Tensor:
    """(N, H, W, C) array -> contiguous (N, C, H, W) float32 tensor."""
    return to_torch(a).permute(0, 3, 1, 2).contiguous()


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) numpy array (detached)."""
    return t.detach().permute(0, 2, 3, 1).numpy()


def kernel_to_torch(k: Any) -> np.ndarray:
    """Flax kernel layout -> PyTorch weight layout, by rank: conv2d ``(kh, kw, in/g, out)`` ->
    ``(out, in/g, kh, kw)``, conv1d ``(k, in/g, out)`` -> ``(out, in/g, k)``, dense
    ``(in, out)`` -> ``(out, in)``; other ranks unchanged."""
    k = np.asarray(k)
    if k.ndim == 4:
        return k.transpose(3, 2, 0, 1)
    if k.ndim == 3:
        return k.transpose(2, 1, 0)
    if k.ndim == 2:
        return k.T
    return k


def _merge(into: dict, tree: Any) -> None:
    for key, value in dict(tree).items():
        if isinstance(value, dict) or hasattr(value, "items"):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def merge_collections(variables: dict[str, Any]) -> dict[str, Any]:
    """One nested dict of every leaf of the linen ``params`` and ``batch_stats`` collections."""
    merged: dict[str, Any] = {}
    for collection in _COLLECTIONS:
        if collection in variables:
            _merge(merged, variables[collection])
    return merged


def jax_to_torch_state(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a (merged) jax parameter tree into a torch state dict, converting layouts."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(jax_to_torch_state(value, f"{prefix}{key}."))
        elif key == "kernel":
            out[f"{prefix}weight"] = kernel_to_torch(value)
        else:
            out[f"{prefix}{_LEAF.get(key, key)}"] = np.asarray(value)
    return out


def load_into_torch(module: torch.nn.Module, variables: dict[str, Any]) -> None:
    """Copy linen variables into a torch reference, in place.

    Args:
      module: a reference built with the same hyper-parameters.
      variables: the linen ``init``/``apply`` variables (``params``, ``batch_stats``).

    Raises:
      ValueError: when the two trees do not hold the same tensors with the same shapes (every
        torch parameter and buffer must be covered, except ``num_batches_tracked``).
    """
    state = jax_to_torch_state(merge_collections(variables))
    own = module.state_dict()
    own_keys = {k for k in own if not k.endswith("num_batches_tracked")}
    if set(state) != own_keys:
        raise ValueError(
            f"load_into_torch: variables must hold exactly the tensors of "
            f"{type(module).__name__}, got extra {sorted(set(state) - own_keys)} and missing "
            f"{sorted(own_keys - set(state))}")
    for k, v in state.items():
        if tuple(own[k].shape) != v.shape:
            raise ValueError(f"load_into_torch: {k} must have shape {tuple(own[k].shape)} in "
                             f"{type(module).__name__}, got {v.shape}")
    module.load_state_dict({k: torch.tensor(np.array(v, np.float32))
                            for k, v in state.items()}, strict=False)
