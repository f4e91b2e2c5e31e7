"""Memory and speed of self-attention over pixels: direct vs chunked vs PyTorch.

Run from the repository root: ``.venv/bin/python benchmarks/bench_attention.py`` (about 3
minutes on 2 CPU cores; ``--quick`` for a smoke run, ``--json FILE`` to save the figures).

1. Non-local block (embedded Gaussian), 64x64 map (4096 tokens), batch 8, 256 -> 64 channels,
   forward + backward (gradients w.r.t. the input and all parameters): peak resident memory and
   time of ``implementation="xla"`` (direct: builds the (4096, 4096) scores),
   ``implementation="chunked"`` (the pure-JAX blocked path), ``"auto"`` (on the CPU: the C++
   FlashAttention kernel) and the PyTorch reference (``attention_jax.torch_reference``, the
   same weights).
   Targets: chunked peak <= 1.0 GB and time <= 1.3x direct.
2. The same block at 128x128 (16,384 tokens), batch 2, chunked and auto: it must run (the
   direct scores alone would be 2 GB per copy).
3. Scaled-dot attention (batch 8, 8 heads, 1024 tokens, head dim 64) forward and
   forward + backward (output and gradients w.r.t. q, k, v for one random cotangent):
   ``functional.attention`` (auto / native / chunked / xla) vs
   ``torch.nn.functional.scaled_dot_product_attention``, alternating in one process (at least
   5 steps each). Target: within 1.0x of torch.

Each configuration runs in a fresh subprocess so its peak RSS (``resource.getrusage``
``ru_maxrss``: interpreter, libraries, parameters, compiled code and the step's buffers) belongs
to it alone; ``rss_before`` is the same high-water mark taken just before the first step, so
``peak - rss_before`` is what the step added. Times are the median (and min) of ``--repeats``
steps after one warm-up step (compile excluded, reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GB = 1e9


def _max_rss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _time(step, repeats: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    step()  # warm-up (compiles on the JAX side)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return first, times


# ------------------------------------------------------------------------------ workers


def _nl_jax(cfg: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from attention_jax import linen as L

    n, s, c, ci = cfg["batch"], cfg["size"], cfg["channels"], cfg["inter"]
    m = L.NonLocal(c, inter_channels=ci, implementation=cfg["impl"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, s, s, c)), jnp.float32)
    v = m.init(jax.random.key(0), x[:1])

    @jax.jit
    def step(params, x):
        def loss(p, x):
            return jnp.sum(m.apply({**v, "params": p}, x) ** 2)
        return jax.grad(loss, argnums=(0, 1))(params, x)

    t0 = time.perf_counter()
    compiled = step.lower(v["params"], x).compile()
    compile_s = time.perf_counter() - t0
    out: dict[str, Any] = {"compile_s": compile_s, "rss_before": _max_rss()}
    first, times = _time(lambda: jax.block_until_ready(compiled(v["params"], x)),
                         cfg["repeats"])
    out.update(first_s=first, times=times, peak_rss=_max_rss())
    return out


def _nl_torch(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO))
    from attention_jax.torch_reference.self_attention import NonLocal

    n, s, c, ci = cfg["batch"], cfg["size"], cfg["channels"], cfg["inter"]
    torch.manual_seed(0)
    m = NonLocal(c, ci).eval()
    x = torch.randn(n, c, s, s, requires_grad=True)
    out: dict[str, Any] = {"rss_before": _max_rss(), "threads": torch.get_num_threads()}

    def step():
        m.zero_grad()
        x.grad = None
        (m(x) ** 2).sum().backward()

    first, times = _time(step, cfg["repeats"])
    out.update(first_s=first, times=times, peak_rss=_max_rss())
    return out


def _sdpa(cfg: dict[str, Any]) -> dict[str, Any]:
    """JAX implementations and torch SDPA in one process, alternating step by step."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as TF

    from attention_jax import functional as F

    b, h, t, d = cfg["shape"]
    rng = np.random.default_rng(0)
    host = [rng.normal(size=(b, h, t, d)).astype(np.float32) for _ in range(4)]
    q, k, v, g = (jnp.asarray(a) for a in host)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in host[:3])
    tg = torch.tensor(host[3])
    steps: dict[str, Any] = {}
    for impl in cfg["impls"]:
        f = lambda q, k, v, impl=impl: F.attention(q, k, v, implementation=impl)
        fwd = jax.jit(f)
        # Forward + backward = the output and its VJP for a random cotangent (as torch below);
        # returning the output keeps XLA from dropping forward work the gradient does not need.
        fb = jax.jit(lambda q, k, v, f=f: (lambda o, vjp: (o, vjp(g)))(*jax.vjp(f, q, k, v)))
        steps[f"{impl}/fwd"] = lambda fn=fwd: jax.block_until_ready(fn(q, k, v))
        steps[f"{impl}/fwdbwd"] = lambda fn=fb: jax.block_until_ready(fn(q, k, v))

    def torch_fwd():
        with torch.no_grad():
            TF.scaled_dot_product_attention(tq, tk, tv)

    def torch_fwdbwd():
        out = TF.scaled_dot_product_attention(tq, tk, tv)
        torch.autograd.grad(out, (tq, tk, tv), tg)

    steps["torch/fwd"], steps["torch/fwdbwd"] = torch_fwd, torch_fwdbwd
    res: dict[str, Any] = {"threads": torch.get_num_threads()}
    for name, step in steps.items():  # warm-up (compiles on the JAX side)
        t0 = time.perf_counter()
        step()
        res[name] = {"first_s": time.perf_counter() - t0, "times": []}
    for _ in range(cfg["repeats"]):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            res[name]["times"].append(time.perf_counter() - t0)
    res["peak_rss"] = _max_rss()
    return res


WORKERS = {"nl_jax": _nl_jax, "nl_torch": _nl_torch, "sdpa": _sdpa}


def _spawn(kind: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(cfg)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------ report


def _med(r: dict[str, Any]) -> float:
    return statistics.median(r["times"])


def _fmt_mem(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    return (f"peak {r['peak_rss'] / GB:5.2f} GB (before step {r['rss_before'] / GB:4.2f} GB, "
            f"step adds {(r['peak_rss'] - r['rss_before']) / GB:4.2f} GB)")


def _fmt_time(r: dict[str, Any]) -> str:
    if "error" in r:
        return ""
    return f"median {_med(r):6.3f} s, min {min(r['times']):6.3f} s"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one worker, with ``--worker``) and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--quick", action="store_true", help="smoke run: small shapes")
    ap.add_argument("--skip-128", action="store_true", help="skip the 128x128 run")
    ap.add_argument("--only-sdpa", action="store_true", help="only the scaled-dot comparison")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per subprocess")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    args = ap.parse_args(argv)
    if args.worker:
        kind, cfg = args.worker
        print(json.dumps(WORKERS[kind](json.loads(cfg))), flush=True)
        return 0

    quick = args.quick
    nl = {"batch": 2 if quick else 8, "size": 16 if quick else 64, "channels": 256,
          "inter": 64, "repeats": args.repeats}
    results: dict[str, Any] = {"config": {"nl": nl}}
    if not args.only_sdpa:
        print(f"Non-local block, {nl['size']}x{nl['size']} map, batch {nl['batch']}, "
              f"{nl['channels']} -> {nl['inter']} channels, forward + backward (float32, CPU)")
        for label, kind, extra in (("jax direct (xla)", "nl_jax", {"impl": "xla"}),
                                   ("jax chunked", "nl_jax", {"impl": "chunked"}),
                                   ("jax auto (native)", "nl_jax", {"impl": "auto"}),
                                   ("torch reference", "nl_torch", {})):
            r = _spawn(kind, {**nl, **extra}, args.timeout)
            results[f"nl64/{label}"] = r
            print(f"  {label:18s} {_fmt_mem(r)}  {_fmt_time(r)}")
        d, c, t = (results[f"nl64/{k}"] for k in ("jax direct (xla)", "jax chunked",
                                                   "torch reference"))
        if not any("error" in r for r in (d, c, t)):
            print(f"  chunked / direct time {(_med(c) / _med(d)):.2f}x (target <= 1.3x); "
                  f"chunked / torch time {(_med(c) / _med(t)):.2f}x; chunked peak "
                  f"{c['peak_rss'] / GB:.2f} GB (target <= 1.0 GB), direct "
                  f"{d['peak_rss'] / GB:.2f} GB, torch {t['peak_rss'] / GB:.2f} GB")
        a = results["nl64/jax auto (native)"]
        if "error" not in a and "error" not in d and "error" not in t:
            print(f"  auto (native) / direct time {(_med(a) / _med(d)):.2f}x; / torch "
                  f"{(_med(a) / _med(t)):.2f}x; peak {a['peak_rss'] / GB:.2f} GB")

        if not args.skip_128:
            for impl in ("chunked", "auto"):
                big = {**nl, "batch": 2 if not quick else 1, "size": 128 if not quick else 32,
                       "impl": impl, "repeats": max(1, args.repeats - 1)}
                r = _spawn("nl_jax", big, args.timeout)
                results[f"nl128/jax {impl}"] = r
                print(f"Non-local block, {big['size']}x{big['size']} map, batch "
                      f"{big['batch']}, {impl}: {_fmt_mem(r)}  {_fmt_time(r)}")


    shape = (2, 2, 256, 64) if quick else (8, 8, 1024, 64)
    print(f"Scaled-dot attention (batch, heads, tokens, head dim) = {shape}, float32, "
          f"{max(args.repeats, 5)} steps each, alternating with torch in one process")
    # One process per JAX implementation: the direct path's 268 MB score buffers slow whatever
    # runs next (page faults on re-allocation), so implementations are not interleaved.
    for impl in ("auto", "native", "chunked", "xla"):
        sd = {"shape": shape, "repeats": max(args.repeats, 5), "impls": [impl]}
        r = _spawn("sdpa", sd, args.timeout)
        results[f"sdpa/{impl}"] = r
        if "error" in r:
            print(f"  {impl}: {r['error']}")
            continue
        row = []
        for mode in ("fwd", "fwdbwd"):
            tt, tj = _med(r[f"torch/{mode}"]), _med(r[f"{impl}/{mode}"])
            row.append(f"{mode} {tj * 1e3:6.1f} ms vs torch {tt * 1e3:6.1f} ms "
                       f"({tj / tt:.2f}x)")
        print(f"  {impl:8s} " + "   ".join(row))
    print("Ratios are JAX / torch (or chunked / direct) from this same run; target <= 1.0x "
          "vs torch.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
