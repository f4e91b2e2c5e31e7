"""Where the native attention kernel beats XLA's direct path on this CPU.

Run: ``.venv/bin/python benchmarks/bench_attention_crossover.py`` (under a minute on 2 CPU
cores; ``--shapes``, ``--repeats``, ``--json``).

``attention(implementation="auto")`` chooses between the two on the CPU by the number of score
elements (batch x heads x Tq x Tk) with three thresholds in ``functional/scoring.py``
(``CPU_NATIVE_GRAD_THRESHOLD``, ``CPU_DIRECT_FORWARD_MIN``, ``CPU_NATIVE_THRESHOLD``), set from
measurements on some CPUs only. This script is that measurement, for the CPU it runs on: for each
shape (batch, heads, tokens, head dim; by default the quick sweep's attention rows at batch 1 to
32) it times ``implementation="native"`` (the C++ kernel) and ``implementation="xla"`` (the
direct path: scores materialised, one fused dot/softmax/dot), forward and forward+backward (the
output and the gradients w.r.t. q, k and v for one random cotangent), in alternating blocks
(``attention_jax.bench.timing``), and prints native / direct with the route ``"auto"`` takes
there, read from its lowering: ``native``, ``direct`` or ``direct fwd, native grad``. A
native / direct ratio under 1 where the route is ``direct`` (or over 1 where it is ``native``)
says a threshold does not fit this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _native
from attention_jax import functional as F
from attention_jax.bench.report import cpu_info
from attention_jax.bench.timing import CPU_DISPATCH, Timer, set_cpu_dispatch, time_blocks

DEFAULT_SHAPES = tuple((b, h, t, d) for h, t, d in ((1, 256, 64), (1, 196, 64), (1, 196, 16),
                                                   (8, 196, 16))
                       for b in (1, 2, 4, 8, 16, 32))
"""(batch, heads, tokens, head dim): the attention, non-local, position-attention and mhsa2d
rows of the quick sweep, at batch 1 to 32 (38,416 to 9.8M score elements)."""


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"a shape is BxHxTxD (batch, heads, tokens, head dim; positive), got {text!r}")
    return dims  # type: ignore[return-value]


def auto_route(shape: tuple[int, int, int, int]) -> str:
    """The path ``attention(implementation="auto")`` takes on this CPU at ``shape`` (B, H, T, D),
    read from the lowered forward and gradient programs: ``"native"``, ``"direct"`` or
    ``"direct fwd, native grad"``."""
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    f = lambda q, k, v: F.attention(q, k, v)  # noqa: E731
    grad = jax.grad(lambda q, k, v: jnp.sum(f(q, k, v)), (0, 1, 2))
    target = _native.attention_target("fwd")
    fwd = target in jax.jit(f).lower(spec, spec, spec).as_text()
    bwd = _native.attention_target("bwd") in jax.jit(grad).lower(spec, spec, spec).as_text()
    if fwd and bwd:
        return "native"
    if bwd:
        return "direct fwd, native grad"
    return "direct" if not fwd else "native fwd"


def _steps(shape, impl: str, rng: np.random.Generator) -> dict[str, Any]:
    q, k, v, ct = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(4))
    f = lambda q, k, v: F.attention(q, k, v, implementation=impl)  # noqa: E731

    def fb(q, k, v, ct):
        out, pullback = jax.vjp(f, q, k, v)
        return out, pullback(ct)

    fwd = jax.jit(f).lower(q, k, v).compile()
    fwdbwd = jax.jit(fb).lower(q, k, v, ct).compile()
    return {"fwd": lambda: jax.block_until_ready(fwd(q, k, v)),
            "f+b": lambda: jax.block_until_ready(fwdbwd(q, k, v, ct))}


def measure(shape: tuple[int, int, int, int], *, repeats: int, min_repeat_s: float,
            settle_s: float = 0.005) -> dict[str, Any]:
    """Median seconds of the kernel and the direct path at ``shape``, forward and f+b."""
    rng = np.random.default_rng(0)
    steps = {impl: _steps(shape, impl, rng) for impl in ("native", "xla")}
    row: dict[str, Any] = {"shape": list(shape), "elements": shape[0] * shape[1] * shape[2] ** 2,
                           "route": auto_route(shape)}
    for mode in ("fwd", "f+b"):
        timers = [Timer(steps[impl][mode], min_repeat_s=min_repeat_s) for impl in steps]
        for t in timers:
            t.warmup(2)
        time_blocks(timers, [repeats] * len(timers), settle_s=settle_s)
        native, direct = (statistics.median(t.samples) for t in timers)
        row[f"native {mode} s"], row[f"direct {mode} s"] = native, direct
        row[f"ratio {mode}"] = native / direct
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=lambda s: [_shape(x) for x in s.split(",")],
                    default=list(DEFAULT_SHAPES), help="comma-separated BxHxTxD")
    ap.add_argument("--repeats", type=int, default=15, help="timed repeats per path and mode")
    ap.add_argument("--min-repeat-s", type=float, default=0.005,
                    help="each repeat runs the step enough times to last this long")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--cpu-dispatch", choices=CPU_DISPATCH, default="async",
                    help="how JAX's CPU client runs each call (attention-jax bench "
                         "--cpu-dispatch); takes effect only before JAX's CPU backend starts")
    args = ap.parse_args(argv)
    dispatch = set_cpu_dispatch(args.cpu_dispatch)
    if not _native.usable("attention"):
        ap.error("the native attention kernel is not available on this machine")
    cpu = cpu_info()
    print(f"{cpu['model_name']} ({cpu['logical_cpus']} CPUs, {_native.isa()} kernel), jax "
          f"{jax.__version__}, dispatch: {args.cpu_dispatch}"
          f"{'' if dispatch['effective'] else ' (no effect: the backend had started)'}; "
          "ratio = native / direct (median of the repeats)")
    print(f"{'B x H x T x D':>18} {'elements':>9}  {'fwd ms native/direct':>21} {'ratio':>5}  "
          f"{'f+b ms native/direct':>21} {'ratio':>5}  auto")
    rows = []
    for shape in args.shapes:
        r = measure(shape, repeats=args.repeats, min_repeat_s=args.min_repeat_s)
        rows.append(r)
        cells = [f"{r[f'native {m} s'] * 1e3:9.3f}/{r[f'direct {m} s'] * 1e3:9.3f} "
                 f"{r[f'ratio {m}']:5.2f}" for m in ("fwd", "f+b")]
        print(f"{'x'.join(map(str, shape)):>18} {r['elements']:>9}  {cells[0]}  {cells[1]}  "
              f"{r['route']}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpu": cpu, "isa": _native.isa(), "jax": jax.__version__,
                       "cpu_dispatch": dispatch, "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
