"""Compiler options for XLA:CPU: which runtime runs a program's convolutions.

XLA:CPU in jaxlib 0.10 hands three kinds of operation to YNNPACK by default: dot products,
reductions and 2-D convolutions (the debug option ``xla_cpu_experimental_ynn_fusion_type``;
XLA takes a float32 or float64 NHWC convolution with more than 16 channels in or out). Without
YNNPACK a convolution runs in XLA's own convolution runtime (Eigen's spatial convolution). One
exception remains with ``"eigen"``: a convolution whose only user is a reduction can be fused
into that reduction's YNNPACK fusion.

Measured on an AMD EPYC Zen 4 (2 cores, AVX-512; 2026-12-03), float32, the 3x3 convolutions of
the quick sweep's rows (28x28, 64 -> 64): at batch 8 and 32 YNNPACK's forward, input gradient
and filter gradient each ran 1.4-2x slower than Eigen's (forward+backward at batch 32: 67-75 ms
against 38-41; PyTorch's oneDNN: 32), while at batch 1 its filter gradient ran 3x faster (0.8
against 2.8 ms). On an Intel Xeon (2 cores, AVX-512 and AMX; 2026-12-03) the same: the 3x3
64 -> 64 convolution's forward+backward at batch 32 75 against 27 ms (PyTorch's 20), and the
training steps of skresnet34 and resnest50d at batch 32 1.2-1.6x as many images per second.
The choice is made per compiled program, not per operation (XLA offers no way to route a
single convolution), so this module gives the options for a whole program and leaves the
default of ``jax.jit`` to XLA: ``cpu_compiler_options("eigen")`` for training and batched
inference with convolutions at batch 8 and more (the default of ``attention-jax train``), the
default (``"ynnpack"``) otherwise. Not measured on the Zen 5.

Use::

    step = jax.jit(train_step, compiler_options=cpu_compiler_options("eigen"))

The options only concern XLA:CPU: for any other platform the dict is empty.

A second CPU choice is JAX's, not XLA's, and this module does not wrap it: JAX's CPU client runs
each call asynchronously by default (a worker thread executes it), and a caller that waits for
every result pays the hand-over between the threads, 10-55 us a call on the 2-core Intel Xeon
VM (README, "JAX's CPU dispatch"). Latency-bound code, such as inference one small batch at a
time, can run calls on the calling thread with
``jax.config.update("jax_cpu_enable_async_dispatch", False)`` before its first computation;
``attention-jax bench --cpu-dispatch sync`` does that.
"""

from __future__ import annotations

import jax

__all__ = ["CONVOLUTION_RUNTIMES", "cpu_compiler_options"]

CONVOLUTION_RUNTIMES = ("ynnpack", "eigen")
"""The runtimes ``cpu_compiler_options`` can give XLA:CPU's convolutions: ``"ynnpack"``
(XLA's default in jaxlib 0.10) and ``"eigen"`` (XLA's own convolution runtime)."""

# XLA's default set of YNNPACK fusions in jaxlib 0.10 less the convolutions (the set is pinned
# by tests/test_compiler.py, which fails if a jaxlib changes it).
_YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


def cpu_compiler_options(convolutions: str = "ynnpack", *,
                         platform: str | None = None) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` that give XLA:CPU's convolutions a runtime.

    Args:
      convolutions: ``"ynnpack"`` (default: XLA's own choice, the empty dict) or ``"eigen"``
        (YNNPACK keeps dot products and reductions, convolutions run in XLA's convolution
        runtime). See the module docstring for when each is faster.
      platform: the platform the program compiles for; default ``jax.default_backend()``.
        Anything but ``"cpu"`` gives the empty dict.

    Returns:
      A dict of XLA debug options (str -> str) for ``jax.jit(..., compiler_options=...)`` or
      ``Lowered.compile(...)``; empty where nothing changes.

    Raises:
      ValueError: ``convolutions`` is not one of ``CONVOLUTION_RUNTIMES``.
    """
    if convolutions not in CONVOLUTION_RUNTIMES:
        raise ValueError(
            f"cpu_compiler_options: convolutions must be one of {CONVOLUTION_RUNTIMES}, "
            f"got {convolutions!r}")
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu" or convolutions == "ynnpack":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": _YNN_WITHOUT_CONVOLUTIONS}
