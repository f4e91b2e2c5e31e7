"""The PyTorch side: the parity reference of each mechanism, loaded with the JAX weights.

The references ship in the package (``attention_jax.torch_reference``, written from the papers
and the official code; the parity tests use the same ones); ``torch_reference.weights.
load_into_torch`` copies the linen variables into them, so both sides compute the same
function. PyTorch runs in its native NCHW layout, JAX in NHWC: each framework in the layout it
is fast in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attention_jax._extras import install_hint

__all__ = ["TorchSide", "load_torch_side"]


class TorchSide:
    """Builds and runs the torch counterpart of a ``Case`` on one torch device."""

    def __init__(self, torch: Any, references: dict[str, Any] | None, load_into_torch: Any,
                 device: str, note: str = "") -> None:
        self.torch = torch
        self.references = references or {}
        self.load_into_torch = load_into_torch
        self.device = device
        self.note = note

    # -- building -------------------------------------------------------------------------
    def _dtype(self, dtype: str) -> Any:
        return {"float32": self.torch.float32, "bfloat16": self.torch.bfloat16}[dtype]

    def _tensor(self, a: Any, dtype: str, *, nchw: bool, grad: bool = True) -> Any:
        t = self.torch.from_numpy(np.array(a, np.float32))  # a writable float32 copy
        if nchw:
            t = t.permute(0, 3, 1, 2).contiguous()
        return t.to(device=self.device, dtype=self._dtype(dtype)).requires_grad_(grad)

    @staticmethod
    def _nchw_to_nhwc(t: Any) -> np.ndarray:
        return t.detach().float().cpu().permute(0, 2, 3, 1).numpy()

    @staticmethod
    def _same_layout(t: Any) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    def attach_module(self, case: Any, variables: dict[str, Any], x: np.ndarray) -> None:
        """Set the torch forward of a registry mechanism, weights copied from ``variables``."""
        build = self.references.get(case.spec.name)
        if build is None:
            case.torch_note = (f"no torch reference for {case.spec.name!r} in "
                               "attention_jax.torch_reference.registry")
            return
        module = build(case.shape[-1])
        self.load_into_torch(module, variables)
        module = module.to(device=self.device, dtype=self._dtype(case.dtype)).eval()
        case.torch_fwd = module
        case.torch_inputs = (self._tensor(x, case.dtype, nchw=True),)
        case.torch_cotangent = self._tensor(case.cotangent, case.dtype, nchw=True, grad=False)
        case.torch_params = tuple(module.parameters())
        case.torch_to_jax_layout = self._nchw_to_nhwc

    def attach_grid_sample(self, case: Any, x: np.ndarray, grid: np.ndarray) -> None:
        """``torch.nn.functional.grid_sample`` (bilinear, zeros, align_corners=False)."""
        fn = self.torch.nn.functional.grid_sample

        def torch_fwd(x, grid):  # torch wants grid in x's dtype
            return fn(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                      align_corners=False)

        case.torch_fwd = torch_fwd
        # Grids stay float32 on both sides (bf16 cannot address pixels exactly).
        grid_t = self.torch.from_numpy(np.array(grid, np.float32)).to(self.device)
        case.torch_inputs = (self._tensor(x, case.dtype, nchw=True), grid_t.requires_grad_(True))
        case.torch_cotangent = self._tensor(case.cotangent, case.dtype, nchw=True, grad=False)
        case.torch_to_jax_layout = self._nchw_to_nhwc

    def attach_attention(self, case: Any, qkv: list[np.ndarray]) -> None:
        """``torch.nn.functional.scaled_dot_product_attention`` on (N, heads, T, D)."""
        case.torch_fwd = self.torch.nn.functional.scaled_dot_product_attention
        case.torch_inputs = tuple(self._tensor(a, case.dtype, nchw=False) for a in qkv)
        case.torch_cotangent = self._tensor(case.cotangent, case.dtype, nchw=False, grad=False)
        case.torch_to_jax_layout = self._same_layout

    # -- running --------------------------------------------------------------------------
    def sync(self) -> None:
        """Wait for queued device work (CUDA runs asynchronously)."""
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def forward_step(self, case: Any) -> Any:
        """One forward in inference mode (``torch.no_grad``), synchronised."""
        with self.torch.no_grad():
            y = case.torch_fwd(*case.torch_inputs)
        self.sync()
        return y

    def fwdbwd_step(self, case: Any) -> Any:
        """Output and the cotangent pulled back to every input and parameter, synchronised."""
        wrt = [*case.torch_inputs, *case.torch_params]
        y = case.torch_fwd(*case.torch_inputs)
        grads = self.torch.autograd.grad(y, wrt, grad_outputs=case.torch_cotangent)
        self.sync()
        return y, grads

    def memory_reset(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.reset_peak_memory_stats()

    def memory_peak(self) -> int | None:
        if self.device.startswith("cuda"):
            return int(self.torch.cuda.max_memory_allocated())
        return None


def load_torch_side(mode: str, jax_backend: str) -> tuple[TorchSide | None, str]:
    """Import torch and the parity references, on the device matching JAX's backend.

    Args:
      mode: ``"auto"`` (cuda when JAX runs on GPU and torch sees CUDA, cpu when JAX runs on CPU,
        off on other backends), ``"cpu"``, ``"cuda"`` or ``"off"``.
      jax_backend: ``jax.default_backend()``.

    Returns:
      ``(side, note)``: ``side`` is None when torch is off or missing; ``note`` says why.
    """
    if mode == "off":
        return None, "torch disabled (--torch off)"
    try:
        import torch
    except ImportError:
        return None, f"torch is not installed: JAX columns only ({install_hint('bench')})"
    if mode == "auto":
        if jax_backend == "cpu":
            device = "cpu"
        elif jax_backend == "gpu" and torch.cuda.is_available():
            device = "cuda"
        else:
            return None, (f"torch has no device comparable to JAX's {jax_backend!r} backend: "
                          "JAX columns only (force with --torch cpu)")
    else:
        device = mode
    references, load, note = None, None, ""
    try:
        from attention_jax.torch_reference.registry import REFERENCES
        from attention_jax.torch_reference.weights import load_into_torch

        references, load = REFERENCES, load_into_torch
    except Exception as e:  # a broken reference must not stop the JAX timings
        note = f"could not import attention_jax.torch_reference ({type(e).__name__}: {e})"
    return TorchSide(torch, references, load, device, note), note
