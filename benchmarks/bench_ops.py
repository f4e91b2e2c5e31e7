"""Bare-operation speed, JAX vs PyTorch, at the shapes of the quick sweep's rows.

Run: ``.venv/bin/python benchmarks/bench_ops.py`` (``--batch-sizes``, ``--repeats``,
``--only``, ``--clock``, ``--json``).

A mechanism row of the quick sweep may stay above PyTorch only by the ratio of XLA:CPU's own
bare operation at the same shapes (issue 15). This script times those operations alone: the
convolutions of ASPP, SK, split attention, PFA, the STN localisation net, CBAM's spatial gate
(7x7, two channels in, one out), BAM's dilated 4 -> 4 convolutions and DANet's head, the
attention core of the self-attention rows (and, for the attention row, its two batched matmuls
and softmax alone; for mhsa2d, its two per-pixel projections), the batched matmuls of DANet's
channel attention, one criss-cross attention pass without its 1x1 layers (row ``cca``) and the
channel gates' two passes over the map (the global average pool and the rescale: SE, ECA and
GE, row ``gates``), forward and forward+backward (the output and the
gradients w.r.t. the input and the weights for a fixed random cotangent; until 2026-12-02 the
JAX side returned the gradients alone, so XLA skipped a convolution's or matmul's forward there
and the f+b ratios of the tables measured before then are too low), each as

* ``xla``: the plain JAX call (``lax.conv_general_dilated``; ``attention(implementation="xla")``
  for attention, ``jnp.matmul``, ``x @ w + b``, ``jax.nn.softmax``, ``jnp.mean`` and ``*``),
  i.e. what XLA:CPU does with the operation;
* ``ours``: what the library runs on the CPU (``functional.convolution.conv_general_dilated``;
  ``attention(implementation="auto")``; ``functional.attention_weights``;
  ``functional.global_avg_pool``, ``functional.rescale``; for criss-cross attention both are
  the library's one pass, ``functional.criss_cross_attention(recurrence=1)``);
* ``torch``: ``torch.nn.functional.conv2d`` / ``scaled_dot_product_attention`` / ``bmm`` /
  ``linear`` / ``softmax`` / ``mean`` and ``*`` on the NCHW map (criss-cross: the official
  CCNet pass, ``torch_reference.self_attention.CrissCrossAttention.once``).

The three are timed alternately in one process (round-robin repeats, each the mean of enough
calls to last ``--min-repeat-s``), so a shared machine's drifts hit all of them; the table gives
medians and the ratios to PyTorch. ``--clock cpu`` measures process CPU time instead of wall
time: pinned to one core (``taskset -c 0``) it is insensitive to other processes' load, and it
is how the library's CPU forms were chosen (see ``functional/convolution.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from attention_jax import functional as F
from attention_jax.bench.timing import CPU_DISPATCH, Timer, set_cpu_dispatch
from attention_jax.compiler import CONVOLUTION_RUNTIMES, cpu_compiler_options
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.torch_reference.self_attention import CrissCrossAttention

NHWC = ("NHWC", "HWIO", "NHWC")
# The JAX forms' compiler options (--cpu-convolutions), set by main().
_OPTIONS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Conv:
    """A 2-D convolution of an (N, H, W, Cin) map: kernel k, dilation, groups (SAME padding)."""

    row: str
    h: int
    cin: int
    cout: int
    k: int = 3
    dilation: int = 1
    groups: int = 1

    @property
    def label(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        d = f" d{self.dilation}" if self.dilation > 1 else ""
        return f"conv{self.k}x{self.k} {self.h}x{self.h} {self.cin}->{self.cout}{d}{g}"


@dataclasses.dataclass(frozen=True)
class Attention:
    """Softmax attention over (N, heads, T, D): the core of a self-attention row."""

    row: str
    heads: int
    tokens: int
    depth: int
    score: str = "scaled_dot"

    @property
    def label(self) -> str:
        return f"attention h{self.heads} t{self.tokens} d{self.depth} {self.score}"


@dataclasses.dataclass(frozen=True)
class Matmul:
    """A batched matmul (N, m, k) @ (N, k, n): DANet's channel attention (energy and attend)."""

    row: str
    m: int
    k: int
    n: int

    @property
    def label(self) -> str:
        return f"bmm {self.m}x{self.k} @ {self.k}x{self.n}"


@dataclasses.dataclass(frozen=True)
class Dense:
    """A per-pixel Dense layer on the pixels as rows, (N*rows, k) @ (k, n) + (n,): mhsa2d's
    ``qkv`` and ``proj`` projections (one weight shared by every row, unlike ``Matmul``)."""

    row: str
    rows: int
    k: int
    n: int

    @property
    def label(self) -> str:
        return f"dense {self.rows}x{self.k} -> {self.n}"


@dataclasses.dataclass(frozen=True)
class Softmax:
    """A softmax over the last axis of (N, rows, cols) scores: the middle of an attention."""

    row: str
    rows: int
    cols: int

    @property
    def label(self) -> str:
        return f"softmax {self.rows}x{self.cols}"


@dataclasses.dataclass(frozen=True)
class Gate:
    """A channel gate's passes over an (N, H, W, C) map, without its small layers.

    ``form``: ``"pool"``, the global average pool to (N, C); ``"rescale"``, ``x * w`` with an
    (N, 1, 1, C) weight (its f+b: gradients w.r.t. both); ``"gate"``, both as one SE-like gate
    with nothing between, ``x * sigmoid(mean_hw(x))``.
    """

    row: str
    h: int
    c: int
    form: str

    @property
    def label(self) -> str:
        return f"{self.form} {self.h}x{self.h}x{self.c}"


@dataclasses.dataclass(frozen=True)
class CrissCross:
    """One criss-cross attention pass over (N, H, W) pixels without its 1x1 layers: from
    queries and keys (N, H, W, Cq) and values (N, H, W, C), the column and row energies, one
    softmax over both (the pixel itself masked in its column), the two weighted sums and the
    residual (``v`` + both, gamma 1): CCNet's core, as the ``cca`` row runs it twice."""

    row: str
    h: int
    cq: int
    c: int

    @property
    def label(self) -> str:
        return f"criss-cross {self.h}x{self.h} q{self.cq} v{self.c}"


OPS: tuple[Conv | Attention | Matmul | Dense | Softmax | Gate | CrissCross, ...] = (
    Conv("aspp", 28, 64, 64, dilation=6),
    Conv("aspp", 28, 64, 64, dilation=12),
    Conv("aspp", 28, 64, 64, dilation=18),
    Conv("aspp", 28, 320, 64, k=1),
    Conv("sk", 28, 64, 64),
    Conv("sk", 28, 64, 64, dilation=2),
    Conv("splat", 28, 64, 128, groups=2),
    Conv("pfa", 28, 64, 16, dilation=3),
    Conv("pfa", 28, 64, 16, dilation=7),
    Conv("stn", 28, 1, 8),
    Conv("stn", 14, 8, 16),
    Conv("cbam", 28, 2, 1, k=7),
    Conv("bam", 28, 4, 4, dilation=4),
    Conv("danet", 14, 128, 32),
    Conv("danet", 14, 32, 32),
    Attention("attention", 1, 256, 64),
    Matmul("attention", 256, 64, 256),
    Softmax("attention", 256, 256),
    Matmul("attention", 256, 256, 64),
    Attention("mhsa2d", 8, 196, 16),
    Dense("mhsa2d", 196, 128, 384),
    Dense("mhsa2d", 196, 128, 128),
    Attention("nl", 1, 196, 64),
    Attention("pam", 1, 196, 16, "dot"),
    Matmul("cam", 128, 196, 128),
    Matmul("cam", 128, 128, 196),
    CrissCross("cca", 14, 16, 128),
    Gate("gates", 28, 64, "pool"),
    Gate("gates", 28, 64, "rescale"),
    Gate("gates", 28, 64, "gate"),
)


def _fwd_bwd(f: Callable) -> Callable:
    """``(*args, cotangent) -> (f(*args), gradients w.r.t. args)``: the forward+backward step.

    The output is returned with the gradients, as the harness's step and PyTorch's (whose
    autograd runs the forward) have it: a step that returned only the gradients would let
    XLA drop a linear operation's forward (a convolution's or matmul's backward does not
    read its output), timing the backward alone against PyTorch's forward and backward.
    """

    def step(*args):
        y, pullback = jax.vjp(f, *args[:-1])
        return y, pullback(args[-1])

    return step


def _jax_fns(forms: dict[str, Callable], args: tuple, ct: jax.Array) -> dict[str, Callable]:
    """``"NAME fwd"`` / ``"NAME f+b"`` calls of each JAX form on ``args`` (the f+b step with the
    cotangent ``ct``), compiled ahead; forms that are one callable share one compile."""
    compiled: dict[Callable, tuple] = {}
    fns: dict[str, Callable] = {}
    for name, f in forms.items():
        if f not in compiled:
            compiled[f] = (jax.jit(f, compiler_options=_OPTIONS).lower(*args).compile(),
                           jax.jit(_fwd_bwd(f), compiler_options=_OPTIONS).lower(
                               *args, ct).compile())
        fwd, fb = compiled[f]
        fns[f"{name} fwd"] = lambda fwd=fwd: jax.block_until_ready(fwd(*args))
        fns[f"{name} f+b"] = lambda fb=fb: jax.block_until_ready(fb(*args, ct))
    return fns


def _torch_fns(f: Callable, inputs: tuple, ct: torch.Tensor) -> dict[str, Callable]:
    """PyTorch's forward (no autograd) and forward+backward (the gradients w.r.t. every
    input, which require grad, for the cotangent ``ct``) of ``f(*inputs)``."""

    def t_fwd():
        with torch.no_grad():
            return f(*inputs)

    return {"torch fwd": t_fwd, "torch f+b": lambda: torch.autograd.grad(f(*inputs), inputs, ct)}


def _conv_fns(op: Conv, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    x = rng.standard_normal((batch, op.h, op.h, op.cin), dtype=np.float32)
    w = (rng.standard_normal((op.k, op.k, op.cin // op.groups, op.cout), dtype=np.float32)
         / np.sqrt(op.k * op.k * op.cin)).astype(np.float32)
    ct = rng.standard_normal((batch, op.h, op.h, op.cout), dtype=np.float32)
    p = op.dilation * (op.k - 1) // 2
    kw = dict(window_strides=(1, 1), padding=((p, p), (p, p)),
              rhs_dilation=(op.dilation, op.dilation), dimension_numbers=NHWC,
              feature_group_count=op.groups)
    fns = _jax_fns({"xla": functools.partial(jax.lax.conv_general_dilated, **kw),
                    "ours": functools.partial(conv_general_dilated, **kw)},
                   (jnp.asarray(x), jnp.asarray(w)), jnp.asarray(ct))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    ctt = torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous()
    conv_t = functools.partial(torch.nn.functional.conv2d, padding=p, dilation=op.dilation,
                               groups=op.groups)
    return fns | _torch_fns(conv_t, (xt, wt), ctt)


def _attention_fns(op: Attention, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    shape = (batch, op.heads, op.tokens, op.depth)
    q, k, v, ct = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    fns = _jax_fns({name: functools.partial(F.attention, score=op.score, implementation=impl)
                    for name, impl in (("xla", "xla"), ("ours", "auto"))},
                   tuple(jnp.asarray(a) for a in (q, k, v)), jnp.asarray(ct))
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention,
                             scale=None if op.score == "scaled_dot" else 1.0)
    return fns | _torch_fns(sdpa, tuple(torch.from_numpy(a).requires_grad_(True)
                                        for a in (q, k, v)), torch.from_numpy(ct))


def _matmul_fns(op: Matmul, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    a, b, ct = (rng.standard_normal(shape, dtype=np.float32) for shape in (
        (batch, op.m, op.k), (batch, op.k, op.n), (batch, op.m, op.n)))
    # the library calls XLA's batched dot as it is
    fns = _jax_fns({"xla": jnp.matmul, "ours": jnp.matmul}, (jnp.asarray(a), jnp.asarray(b)),
                   jnp.asarray(ct))
    return fns | _torch_fns(torch.bmm, tuple(torch.from_numpy(x).requires_grad_(True)
                                             for x in (a, b)), torch.from_numpy(ct))


def _dense(x, w, b):
    return x @ w + b


def _dense_fns(op: Dense, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    x, ct = (rng.standard_normal((batch * op.rows, n), dtype=np.float32) for n in (op.k, op.n))
    w = (rng.standard_normal((op.k, op.n), dtype=np.float32) / np.sqrt(op.k)).astype(np.float32)
    b = rng.standard_normal((op.n,), dtype=np.float32)
    # the library's Dense layers are XLA's dot as it is
    fns = _jax_fns({"xla": _dense, "ours": _dense}, tuple(jnp.asarray(a) for a in (x, w, b)),
                   jnp.asarray(ct))
    inputs = tuple(torch.from_numpy(a).requires_grad_(True)
                   for a in (x, np.ascontiguousarray(w.T), b))  # weight (out, in)
    return fns | _torch_fns(torch.nn.functional.linear, inputs, torch.from_numpy(ct))


def _softmax_fns(op: Softmax, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    s, ct = (rng.standard_normal((batch, op.rows, op.cols), dtype=np.float32) for _ in range(2))
    fns = _jax_fns({"xla": functools.partial(jax.nn.softmax, axis=-1),
                    "ours": F.attention_weights}, (jnp.asarray(s),), jnp.asarray(ct))
    return fns | _torch_fns(functools.partial(torch.softmax, dim=-1),
                            (torch.from_numpy(s).requires_grad_(True),), torch.from_numpy(ct))


def _gate_fns(op: Gate, batch: int, rng: np.random.Generator) -> dict[str, Callable]:
    x = rng.standard_normal((batch, op.h, op.h, op.c), dtype=np.float32)
    w = rng.random((batch, 1, 1, op.c), dtype=np.float32)
    ct_shape = (batch, op.c) if op.form == "pool" else x.shape
    ct = rng.standard_normal(ct_shape, dtype=np.float32)
    forms = {
        "pool": (lambda a: jnp.mean(a, (1, 2)), F.global_avg_pool),
        "rescale": (lambda a, b: a * b, F.rescale),
        "gate": (lambda a: a * jax.nn.sigmoid(jnp.mean(a, (1, 2), keepdims=True)),
                 lambda a: F.rescale(a, jax.nn.sigmoid(F.global_avg_pool(a, keepdims=True)))),
    }[op.form]
    args = (jnp.asarray(x), jnp.asarray(w)) if op.form == "rescale" else (jnp.asarray(x),)
    fns = _jax_fns(dict(zip(("xla", "ours"), forms, strict=True)), args, jnp.asarray(ct))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.from_numpy(w).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    ctt = torch.from_numpy(ct)
    ctt = ctt if op.form == "pool" else ctt.permute(0, 3, 1, 2).contiguous()
    t_op, t_args = {
        "pool": (lambda a: a.mean((2, 3)), (xt,)),
        "rescale": (lambda a, b: a * b, (xt, wt)),
        "gate": (lambda a: a * torch.sigmoid(a.mean((2, 3), keepdim=True)), (xt,)),
    }[op.form]
    return fns | _torch_fns(t_op, t_args, ctt)


def _criss_cross_fns(op: CrissCross, batch: int, rng: np.random.Generator
                     ) -> dict[str, Callable]:
    q, k = (rng.standard_normal((batch, op.h, op.h, op.cq), dtype=np.float32) for _ in range(2))
    v, ct = (rng.standard_normal((batch, op.h, op.h, op.c), dtype=np.float32) for _ in range(2))
    one = jnp.ones((1,), jnp.float32)

    def once(q, k, v):  # the library's pass, its layers handing over q, k and v as they are
        return F.criss_cross_attention(v, query=lambda _: q, key=lambda _: k,
                                       value=lambda _: v, gamma=one, recurrence=1)

    fns = _jax_fns({"xla": once, "ours": once}, tuple(jnp.asarray(a) for a in (q, k, v)),
                   jnp.asarray(ct))
    ref = CrissCrossAttention(op.c, op.cq, recurrence=1)
    with torch.no_grad():
        ref.gamma.fill_(1.0)
    # the official pass, its 1x1 convolutions replaced by layers handing over q, k and v
    held: dict[str, torch.Tensor] = {}
    del ref.query, ref.key, ref.value
    ref.query, ref.key = (lambda _: held["q"]), (lambda _: held["k"])
    ref.value = lambda _: held["v"]

    def t_once(qt, kt, vt):
        held.update(q=qt, k=kt, v=vt)
        return ref.once(vt)

    nchw = [torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (q, k, v, ct)]
    return fns | _torch_fns(t_once, tuple(t.requires_grad_(True) for t in nchw[:3]), nchw[3])


_MAKERS = {Conv: _conv_fns, Attention: _attention_fns, Matmul: _matmul_fns, Dense: _dense_fns,
           Softmax: _softmax_fns, Gate: _gate_fns, CrissCross: _criss_cross_fns}


def _time(fns: dict[str, Callable], repeats: int, min_repeat_s: float,
          clock: Callable[[], float], settle_s: float = 0.01) -> dict[str, list[float]]:
    """Round-robin medians' samples. Each JAX callable that follows a PyTorch one first runs
    untimed for ``settle_s`` (the harness's ``Timer.settle``: PyTorch's OpenMP workers spin for
    milliseconds after each call); without it the first JAX form in the round (``xla``) read
    10-30% slower than the identical ``ours`` (the matmul rows, 2026-12-02)."""
    numbers = {}
    for name, f in fns.items():  # warm-up and calibration
        f()
        t0 = clock()
        f()
        numbers[name] = max(1, int(min_repeat_s / max(clock() - t0, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    previous = ""
    for _ in range(repeats):  # round robin: every repeat visits every callable
        for name, f in fns.items():
            if previous.startswith("torch") and not name.startswith("torch"):
                Timer(f, min_repeat_s=min_repeat_s).settle(settle_s)
            previous = name
            t0 = clock()
            for _ in range(numbers[name]):
                f()
            samples[name].append((clock() - t0) / numbers[name])
    return samples


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-repeat-s", type=float, default=0.02)
    ap.add_argument("--only", default="", help="comma-separated rows (aspp, sk, splat, ..., gates)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--cpu-convolutions", choices=CONVOLUTION_RUNTIMES, default="ynnpack",
                    help="XLA:CPU's convolution runtime for the JAX forms "
                         "(attention_jax.cpu_compiler_options)")
    ap.add_argument("--cpu-dispatch", choices=CPU_DISPATCH, default="async",
                    help="how JAX's CPU client runs each call (attention-jax bench "
                         "--cpu-dispatch); takes effect only before JAX's CPU backend starts")
    args = ap.parse_args(argv)
    dispatch = set_cpu_dispatch(args.cpu_dispatch)
    _OPTIONS.clear()
    _OPTIONS.update(cpu_compiler_options(args.cpu_convolutions))
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    only = {s for s in args.only.split(",") if s}
    rng = np.random.default_rng(0)
    print(f"{_cpu_model()}, jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), clock: {args.clock}, XLA:CPU convolutions: "
          f"{args.cpu_convolutions}, dispatch: {args.cpu_dispatch}"
          f"{'' if dispatch['effective'] else ' (no effect: the backend had started)'}; medians of "
          f"{args.repeats} repeats, ratio = JAX / PyTorch")
    print(f"{'row':10s} {'op':38s} {'B':>3s}  {'fwd ms xla/ours/torch':>25s} "
          f"{'xla':>5s} {'ours':>5s}  {'f+b ms xla/ours/torch':>25s} {'xla':>5s} {'ours':>5s}")
    results = []
    for op in OPS:
        if only and op.row not in only:
            continue
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            samples = _time(_MAKERS[type(op)](op, batch, rng), args.repeats,
                            args.min_repeat_s, clock)
            med = {k: statistics.median(v) for k, v in samples.items()}
            spread = {k: (min(v), max(v)) for k, v in samples.items()}
            res = {"row": op.row, "op": op.label, "batch": batch, "median_s": med,
                   "min_max_s": spread}
            cells = []
            for mode in ("fwd", "f+b"):
                x, o, t = (med[f"{n} {mode}"] for n in ("xla", "ours", "torch"))
                res[f"ratio_xla_{mode}"], res[f"ratio_ours_{mode}"] = x / t, o / t
                cells.append(f"{x * 1e3:7.2f}/{o * 1e3:7.2f}/{t * 1e3:7.2f} "
                             f"{x / t:5.2f} {o / t:5.2f}")
            print(f"{op.row:10s} {op.label:38s} {batch:3d}  {cells[0]}  {cells[1]}", flush=True)
            results.append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpu": _cpu_model(), "clock": args.clock,
                       "cpu_convolutions": args.cpu_convolutions, "cpu_dispatch": dispatch,
                       "results": results}, fh,
                      indent=1)
    return results


if __name__ == "__main__":
    main()
