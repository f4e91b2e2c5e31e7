"""Timing primitives: calibrated repeats, summary statistics, memory bandwidth, roofline."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Timer", "summarize", "measure_bandwidth", "roofline"]


class Timer:
    """Times one step function: calibrate once, then one repeat per call of ``repeat()``.

    A repeat runs the step ``number`` times back to back (each call waits for its result) and
    records the mean; ``number`` is chosen so one repeat lasts at least ``min_repeat_s``, which
    keeps microsecond steps above the clock's resolution. Repeats of different timers are meant
    to be interleaved (JAX, PyTorch, JAX, ...) so slow drifts of the machine hit both sides.
    """

    def __init__(self, step: Callable[[], Any], *, min_repeat_s: float, max_number: int = 1000):
        self.step = step
        self.min_repeat_s = min_repeat_s
        self.max_number = max_number
        self.number = 1
        self.samples: list[float] = []
        self.first_s = math.nan

    def warmup(self, n: int) -> Any:
        """Run ``max(n, 1)`` untimed-for-stats steps; the last one calibrates ``number``."""
        out = None
        for _ in range(max(n, 1)):
            t0 = time.perf_counter()
            out = self.step()
            dt = time.perf_counter() - t0
            if math.isnan(self.first_s):
                self.first_s = dt
        wanted = math.ceil(self.min_repeat_s / max(dt, 1e-9))
        self.number = int(min(self.max_number, max(1, wanted)))
        return out

    def repeat(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.number):
            self.step()
        self.samples.append((time.perf_counter() - t0) / self.number)


def summarize(samples: list[float], batch: int, number: int) -> dict[str, Any]:
    """Median, min and max seconds per step over repeats, and images per second."""
    med = statistics.median(samples)
    return {
        "median_s": med,
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": len(samples),
        "number": number,
        "images_per_s": batch / med if med > 0 else math.inf,
    }


def measure_bandwidth(megabytes: int = 256, *, repeats: int = 5,
                      device: jax.Device | None = None) -> dict[str, Any]:
    """Memory bandwidth of the JAX device, by a large in-place elementwise copy.

    ``x = x + 1`` over a float32 array of ``megabytes``, jitted with the input donated so XLA
    writes in place: each step reads the array once and writes it once, with no fresh
    allocation (first-touch page faults of a new 256 MiB buffer would otherwise dominate on
    CPU). Bandwidth = 2 * bytes / best time. Works the same on CPU, GPU and TPU.

    Returns:
      ``{"bytes_per_s", "megabytes", "best_s", "method"}``.
    """
    n = megabytes * (1 << 20) // 4
    x = jax.device_put(jnp.zeros((n,), jnp.float32), device)
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0).lower(x).compile()
    x = jax.block_until_ready(step(x))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(step(x))
        best = min(best, time.perf_counter() - t0)
    del x
    return {
        "bytes_per_s": 2 * n * 4 / best,
        "megabytes": megabytes,
        "best_s": best,
        "method": f"in-place jit(x + 1) over {megabytes} MiB float32 on "
                  f"{jax.default_backend()}, 2 x bytes / best of {repeats}",
    }


def roofline(min_bytes: int, bytes_per_s: float, measured_s: float) -> dict[str, Any]:
    """Fraction of the memory-bandwidth bound achieved by a forward step.

    Model: a perfect kernel moves ``min_bytes`` (the feature map read once, the output written
    once, the parameters read once) at the measured bandwidth; ``fraction = bound / measured``.
    Real kernels need at least two passes over x for these mechanisms (pool, then rescale), so
    about 0.67 is the practical ceiling for a two-pass implementation.
    """
    bound = min_bytes / bytes_per_s
    return {"min_bytes": int(min_bytes), "bound_s": bound,
            "fraction": bound / measured_s if measured_s > 0 else math.nan}
