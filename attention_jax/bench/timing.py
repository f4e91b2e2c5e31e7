"""Timing primitives: calibrated repeats, summary statistics, memory bandwidth, roofline."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["CPU_DISPATCH", "Timer", "plan_repeats", "time_blocks", "summarize",
           "measure_bandwidth", "roofline", "set_cpu_dispatch"]

CPU_DISPATCH = ("async", "sync")
"""How JAX's CPU client runs a call of a compiled program (``set_cpu_dispatch``)."""


def set_cpu_dispatch(mode: str) -> dict[str, Any]:
    """Choose how JAX's CPU client runs each call of a compiled program.

    ``"async"`` (JAX's default): the call enqueues the execution on a worker thread and returns
    at once, so Python can run ahead; ``"sync"``: the execution runs on the calling thread,
    which returns with the result computed (``jax_cpu_enable_async_dispatch=False``; it only
    concerns single-device programs). A benchmark that waits for each result pays the hand-over
    between the threads in every call under ``"async"``; on this project's 2-core Intel Xeon
    VM that is 10-55 us (README, Benchmarks). JAX reads the option once, when it starts its CPU
    backend: call this before anything runs on a device.

    Args:
      mode: ``"async"`` or ``"sync"`` (``CPU_DISPATCH``).

    Returns:
      ``{"requested": mode, "effective": bool}``: ``effective`` is False when the CPU backend
      had already started with the other mode, so the call changed nothing.

    Raises:
      ValueError: ``mode`` is not one of ``CPU_DISPATCH``.
    """
    if mode not in CPU_DISPATCH:
        raise ValueError(f"set_cpu_dispatch: mode must be one of {CPU_DISPATCH}, got {mode!r}")
    wanted = mode == "async"
    if jax.config.values["jax_cpu_enable_async_dispatch"] == wanted:
        return {"requested": mode, "effective": True}
    from jax._src import xla_bridge  # backends_are_initialized has no public name

    started = xla_bridge.backends_are_initialized()
    if not started:
        jax.config.update("jax_cpu_enable_async_dispatch", wanted)
    return {"requested": mode, "effective": not started}


class Timer:
    """Times one step function: calibrate once, then one repeat per call of ``repeat()``.

    A repeat runs the step ``number`` times back to back (each call waits for its result) and
    records the mean; ``number`` is chosen so one repeat lasts at least ``min_repeat_s``, which
    keeps microsecond steps above the clock's resolution. Timers of the two frameworks are run
    in alternating blocks (``time_blocks``), each block after ``settle``, so slow drifts of the
    machine hit both sides and neither side's idle threads run into the other's samples.
    """

    def __init__(self, step: Callable[[], Any], *, min_repeat_s: float, max_number: int = 1000):
        self.step = step
        self.min_repeat_s = min_repeat_s
        self.max_number = max_number
        self.number = 1
        self.samples: list[float] = []
        self.first_s = math.nan
        self.step_s = math.nan  # the last warm-up step's time, for planning repeats

    def warmup(self, n: int) -> Any:
        """Run ``max(n, 1)`` untimed-for-stats steps; the last one calibrates ``number``."""
        out = None
        for _ in range(max(n, 1)):
            t0 = time.perf_counter()
            out = self.step()
            dt = time.perf_counter() - t0
            if math.isnan(self.first_s):
                self.first_s = dt
        self.step_s = dt
        wanted = math.ceil(self.min_repeat_s / max(dt, 1e-9))
        self.number = int(min(self.max_number, max(1, wanted)))
        return out

    @property
    def repeat_s(self) -> float:
        """Expected duration of one repeat (``number`` steps), from the warm-up."""
        return self.number * self.step_s

    def repeat(self) -> None:
        """Time one repeat and append the mean seconds per step to ``samples``."""
        t0 = time.perf_counter()
        for _ in range(self.number):
            self.step()
        self.samples.append((time.perf_counter() - t0) / self.number)

    def settle(self, seconds: float) -> None:
        """Run the step untimed, at least once and for at least ``seconds``.

        Before a block, after the other framework ran: PyTorch's OpenMP workers spin for a few
        milliseconds after each parallel region (libgomp's default wait policy; ~4 ms of CPU
        measured on the 2-core AMD EPYC this was written on, ``benchmarks/omp_interference.py``)
        and would share the cores with the first samples. Keeping this side busy meanwhile,
        rather than sleeping, also keeps its own threads and caches warm (a sleep made the next
        JAX repeat up to several times slower there).
        """
        t0 = time.perf_counter()
        self.step()
        while time.perf_counter() - t0 < seconds:
            self.step()


def plan_repeats(timers: list[Timer], *, fixed: int | None, min_repeats: int,
                 max_repeats: int, budget_s: float) -> list[int]:
    """How many repeats each timer gets.

    ``fixed`` when given; else each timer's share of ``budget_s`` divided by its repeat's
    duration, clipped to ``[min_repeats, max_repeats]``: every row gets at least
    ``min_repeats``, short steps many more.
    """
    if fixed is not None:
        return [max(1, fixed)] * len(timers)
    share = budget_s / max(len(timers), 1)
    out = []
    for t in timers:
        fit = int(share / t.repeat_s) if t.repeat_s > 0 else max_repeats
        out.append(max(min_repeats, min(max_repeats, fit)))
    return out


def time_blocks(timers: list[Timer], counts: list[int], *, settle_s: float,
                deadline: float | None = None) -> bool:
    """Time every timer's repeats in two rounds of blocks, in ABBA order.

    Round one runs each timer's first half of its repeats as one block, in the given order
    (e.g. JAX forward, JAX forward+backward, PyTorch forward, PyTorch forward+backward); round
    two the rest in reverse order, so a drift of the machine during the row weighs on both
    frameworks alike. Each block starts with ``Timer.settle``.

    Args:
      timers: the row's timers.
      counts: repeats per timer (``plan_repeats``).
      settle_s: untimed busy time before each block.
      deadline: a ``time.monotonic()`` past which round two is not started.

    Returns:
      Whether every planned repeat ran (False when the deadline cut round two).
    """
    first = [math.ceil(n / 2) for n in counts]
    rounds = [list(zip(timers, first, strict=True)),
              [(t, n - f) for t, n, f in zip(timers, counts, first, strict=True)][::-1]]
    for i, blocks in enumerate(rounds):
        if i and deadline is not None and time.monotonic() > deadline:
            return False
        for timer, n in blocks:
            if n <= 0:
                continue
            timer.settle(settle_s)
            for _ in range(n):
                timer.repeat()
    return True


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
