"""grid_sample (bilinear, zeros) speed: attention_jax vs PyTorch, forward and forward+backward.

Run: ``.venv/bin/python benchmarks/bench_grid_sample.py`` (``--repeats``, ``--threads``).
The two sides are timed alternately (JAX, PyTorch, JAX, ...) after warm-up, so slow drifts of a
shared machine hit both; each repeat is the mean of enough calls to last ``--min-repeat-s``, and
the table reports medians over repeats and the ratio JAX / PyTorch (<= 1.0 means JAX is as fast
or faster). Forward+backward is the output and its gradients w.r.t. both the image and the grid
for a random cotangent (``jax.vjp``; torch: forward then ``autograd.grad``); grids are random
affine transforms near the identity with the output size equal to the input size.

Two JAX implementations are timed: ``native`` (the C++ XLA:CPU kernel, what
``implementation="auto"`` runs on the CPU) and ``xla`` (the pure-JAX gather/scatter path that
GPU/TPU use), each against the same PyTorch call. Besides the medians, the table gives the
spread of the per-repeat ratios (JAX repeat i / PyTorch repeat i: 25th-75th percentile).

The header names the CPU, the native kernels' variant and PyTorch's kernel level. To compare
variants on one machine: ``ATTENTION_JAX_NATIVE_ISA=avx2`` builds and loads the AVX2 library on
an AVX-512 CPU, ``ATEN_CPU_CAPABILITY=avx2`` makes PyTorch use its AVX2 kernels (together: an
AVX2-only machine), ``ATTENTION_JAX_NATIVE_GATHER=0/1`` picks the AVX-512 one-channel tap
fetch; ``taskset -c 0`` and ``--threads 1`` time one core (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as tF

from attention_jax import _native
from attention_jax.functional import affine_grid, grid_sample

SHAPES = [(64, 28, 28, 1), (64, 60, 60, 1), (16, 56, 56, 32)]
IMPLS = ("native", "xla")


def _calls(step, min_s: float) -> int:
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    return max(1, int(np.ceil(min_s / max(dt, 1e-9))))


def _time(step, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - t0) / number


def bench_shape(shape, *, repeats: int, warmup: int, min_repeat_s: float) -> dict[str, float]:
    n, h, w, c = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    theta = np.tile(np.eye(2, 3, dtype=np.float32)[None], (n, 1, 1))
    theta += 0.1 * rng.normal(size=theta.shape).astype(np.float32)
    grid = np.array(affine_grid(jnp.asarray(theta), shape))
    cot = rng.normal(size=shape).astype(np.float32)

    xj, gj, cj = jnp.asarray(x), jnp.asarray(grid), jnp.asarray(cot)
    jax_steps = {}
    for impl in IMPLS:
        f = lambda a, g, impl=impl: grid_sample(a, g, implementation=impl)
        fwd_j = jax.jit(f)
        # The output is returned with the gradients, so XLA cannot drop forward work.
        bwd_j = jax.jit(lambda a, g, f=f: (lambda o, vjp: (o, *vjp(cj)))(*jax.vjp(f, a, g)))
        jax_steps[impl] = (fwd_j, bwd_j)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    gt = torch.from_numpy(grid)
    ct = torch.from_numpy(np.ascontiguousarray(cot.transpose(0, 3, 1, 2)))
    xr, gr = xt.clone().requires_grad_(True), gt.clone().requires_grad_(True)

    def fwd_t():
        with torch.no_grad():
            return tF.grid_sample(xt, gt, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)

    def bwd_t():
        out = tF.grid_sample(xr, gr, align_corners=False)
        return (out, *torch.autograd.grad(out, (xr, gr), ct))

    out = {}
    for impl, (fwd_j, bwd_j) in jax_steps.items():
        # Same answer on both sides before timing anything.
        np.testing.assert_allclose(np.asarray(fwd_j(xj, gj)),
                                   fwd_t().permute(0, 2, 3, 1).numpy(), atol=1e-4)
        _, gx, gg = bwd_j(xj, gj)
        _, gxt, ggt = bwd_t()
        np.testing.assert_allclose(np.asarray(gx), gxt.permute(0, 2, 3, 1).numpy(), atol=1e-3)
        np.testing.assert_allclose(np.asarray(gg), ggt.numpy(), rtol=1e-3, atol=1e-2)
        steps = {
            "fwd": (lambda f=fwd_j: f(xj, gj).block_until_ready(), fwd_t),
            "fwd+bwd": (lambda f=bwd_j: jax.block_until_ready(f(xj, gj)), bwd_t),
        }
        for name, (sj, st) in steps.items():
            for _ in range(warmup):
                sj()
                st()
            nj, nt = _calls(sj, min_repeat_s), _calls(st, min_repeat_s)
            tj, tt = [], []
            for _ in range(repeats):
                tj.append(_time(sj, nj))
                tt.append(_time(st, nt))
            out[f"{impl}/{name}_jax_ms"] = statistics.median(tj) * 1e3
            out[f"{impl}/{name}_torch_ms"] = statistics.median(tt) * 1e3
            ratios = [a / b for a, b in zip(tj, tt, strict=True)]
            out[f"{impl}/{name}_ratio_q"] = tuple(np.percentile(ratios, [25, 75]))
    return out


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), else the platform's processor."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-repeat-s", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads (default: the cores this process may use)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small shapes, 2 repeats")
    args = ap.parse_args()
    shapes = SHAPES
    if args.quick:
        shapes = [(4, 8, 8, 1), (2, 8, 8, 4)]
        args.repeats, args.warmup, args.min_repeat_s = 2, 1, 0.0
    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({args.threads} threads, {torch.backends.cpu.get_cpu_capability()} kernels), "
          f"{cpu_name()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cpus, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(_native.status())
    print(f"{'shape (N,H,W,C)':<18} {'impl':<7} {'pass':<8} {'jax ms':>9} {'torch ms':>9} "
          f"{'ratio':>6} {'spread':>11}")
    for shape in shapes:
        r = bench_shape(shape, repeats=args.repeats, warmup=args.warmup,
                        min_repeat_s=args.min_repeat_s)
        for impl in IMPLS:
            for name in ("fwd", "fwd+bwd"):
                j, t = r[f"{impl}/{name}_jax_ms"], r[f"{impl}/{name}_torch_ms"]
                lo, hi = r[f"{impl}/{name}_ratio_q"]
                print(f"{str(shape):<18} {impl:<7} {name:<8} {j:>9.3f} {t:>9.3f} {j / t:>6.2f} "
                      f"{f'{lo:.2f}-{hi:.2f}':>11}")


if __name__ == "__main__":
    main()
