"""Model-zoo speed: attention_jax's timm backbones vs timm's own models, same weights.

Run from a repository checkout: ``.venv/bin/python benchmarks/bench_zoo.py`` (``--models``,
``--batches``, ``--train-batch``, ``--size``, ``--repeats``, ``--conv-breakdown``, ``--json``).

For each model (default: resnet50, seresnet50, ecaresnet50d, skresnet34, resnest50d) timm's
model is built with random weights (tests/models/timm_pairs.py) and the same weights are loaded
into ``create_model(name)`` with ``load_timm_state_dict``; the logits are checked to agree.
Timed, at ``--size`` x ``--size`` (224):

- inference: images/s of the eval-mode forward for each batch of ``--batches`` (1, 8, 32);
  JAX ``jit(model.apply)`` on NHWC input, PyTorch ``model(x)`` under ``torch.inference_mode``
  on NCHW input (timm's default layout);
- a training step at ``--train-batch`` (32): train-mode forward (batch statistics), softmax
  cross-entropy, backward, SGD with momentum 0.9 (JAX: one jitted step with optax, buffers
  donated; PyTorch: ``zero_grad``, ``backward``, ``optimizer.step``).

The two sides alternate (JAX block, pause, PyTorch block, pause, ...) so a shared machine's
drifts hit both, and the pause lets PyTorch's OpenMP threads stop spinning before JAX runs (they
otherwise steal the cores JAX's next block needs). Each repeat is the mean of enough calls to
last ``--min-repeat-s``; the table gives medians over ``--repeats`` and the time ratio JAX /
PyTorch (<= 1.0: JAX as fast or faster). ``--conv-breakdown`` (automatic where the ratio exceeds
1.0 at batch 8 or 32, or in the training step) times every convolution of the model alone at its
shape (the convolution attention_jax's model runs, ``conv_forms``, vs
``torch.nn.functional.conv2d``; forward, or for the training step forward plus input and weight
gradients) and reports their sum and the shapes where JAX loses most: where the time goes.

Runs unchanged on GPU (PyTorch on CUDA when JAX runs on a GPU and torch sees one) and TPU
(JAX columns only).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.compiler import CONVOLUTION_RUNTIMES, cpu_compiler_options
from attention_jax.functional.convolution import conv_general_dilated

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the timm stand-in and weight filler live in tests/
    sys.path.insert(0, str(REPO_ROOT))

MODELS = ("resnet50", "seresnet50", "ecaresnet50d", "skresnet34", "resnest50d")


def _sync_torch(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _calibrate(step, min_s: float) -> int:
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    return max(1, int(np.ceil(min_s / max(dt, 1e-9))))


def _block(step, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - t0) / number


def _trim() -> None:
    """Give freed heap pages back to the OS (glibc): the two frameworks' training steps each
    free gigabytes of activations, which would otherwise pile up in one process's RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def alternate(jax_step, torch_step, *, repeats: int, warmup: int, min_s: float,
              settle_s: float) -> dict[str, float]:
    """Median seconds per call of each side, timed in alternating blocks."""
    for _ in range(warmup):
        jax_step()
        _trim()
        if torch_step is not None:
            torch_step()
            _trim()
    nj = _calibrate(jax_step, min_s)
    _trim()
    nt = _calibrate(torch_step, min_s) if torch_step is not None else 0
    tj, tt = [], []
    for _ in range(repeats):
        _trim()
        time.sleep(settle_s)
        tj.append(_block(jax_step, nj))
        if torch_step is not None:
            _trim()
            time.sleep(settle_s)
            tt.append(_block(torch_step, nt))
    out = {"jax_s": statistics.median(tj)}
    if tt:
        out["torch_s"] = statistics.median(tt)
        out["ratio"] = out["jax_s"] / out["torch_s"]
    return out


def _torch_device(torch) -> str | None:
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def build_pair(name: str, torch, device: str | None):
    """timm's model with random weights (on ``device``) and our variables holding them."""
    from attention_jax.interop import load_timm_state_dict
    from tests.models.timm_pairs import timm_random

    tm, sd = timm_random(name)
    variables = load_timm_state_dict(name, sd)
    if device is not None:
        tm = tm.to(device)
    return tm, variables


def _options(args) -> dict[str, str]:
    """The JAX programs' compiler options (``--cpu-convolutions``)."""
    return cpu_compiler_options(getattr(args, "cpu_convolutions", "ynnpack"))


def inference(name: str, tm, variables, torch, device, *, batch: int, size: int,
              args) -> dict[str, Any]:
    from attention_jax.models import create_model

    model = create_model(name)
    x = np.random.default_rng(batch).normal(size=(batch, size, size, 3)).astype(np.float32)
    xj = jax.device_put(jnp.asarray(x))
    fwd = jax.jit(model.apply, compiler_options=_options(args))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(variables, xj))
    compile_s = time.perf_counter() - t0

    def jax_step():
        jax.block_until_ready(fwd(variables, xj))

    torch_step = None
    if device is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
        tm.eval()

        def torch_step():
            with torch.inference_mode():
                tm(xt)
            _sync_torch(torch, device)

    res = alternate(jax_step, torch_step, repeats=args.repeats, warmup=args.warmup,
                    min_s=args.min_repeat_s, settle_s=args.settle_s)
    res.update({"batch": batch, "jax_compile_s": compile_s,
                "jax_images_per_s": batch / res["jax_s"]})
    if "torch_s" in res:
        res["torch_images_per_s"] = batch / res["torch_s"]
    return res


def train_step(name: str, tm, variables, torch, device, *, batch: int, size: int,
               args) -> dict[str, Any]:
    import optax

    from attention_jax.models import create_model

    model = create_model(name)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, size=batch)
    opt = optax.sgd(0.01, momentum=0.9)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt": opt.init(variables["params"])}
    xj, yj = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))

    def step(state, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": state["batch_stats"]}, x,
                                      train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = opt.update(g, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates),
                "batch_stats": upd["batch_stats"], "opt": opt_state}, loss

    step = jax.jit(step, donate_argnums=0, compiler_options=_options(args))
    t0 = time.perf_counter()
    state, loss = step(state, xj, yj)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def jax_step():
        box["state"], loss = step(box["state"], xj, yj)
        jax.block_until_ready(loss)

    torch_step = None
    if device is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
        yt = torch.from_numpy(y).to(device)
        tm.train()
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        lossf = torch.nn.CrossEntropyLoss()

        def torch_step():
            topt.zero_grad(set_to_none=True)
            lossf(tm(xt), yt).backward()
            topt.step()
            _sync_torch(torch, device)

    res = alternate(jax_step, torch_step, repeats=args.train_repeats, warmup=args.warmup,
                    min_s=args.min_repeat_s, settle_s=args.settle_s)
    res.update({"batch": batch, "jax_compile_s": compile_s,
                "jax_images_per_s": batch / res["jax_s"]})
    if "torch_s" in res:
        res["torch_images_per_s"] = batch / res["torch_s"]
        tm.eval()
        del topt
    return res


# timm's attention blocks whose attention_jax counterparts (SelectiveKernel, SplitAttention)
# build every convolution with the library's layers, so with its CPU forms.
MECHANISM_BLOCKS = ("SelectiveKernel", "SplitAttn")


def conv_forms(tm, torch) -> dict[Any, str]:
    """Which convolution attention_jax's model runs for each of timm's Conv2d modules.

    ``"ours"`` (``functional.convolution.conv_general_dilated``, with its CPU forms) for 1x1
    kernels, which the ResNet family passes to the library (``resnet_core.Conv``), and for
    every convolution inside a ``MECHANISM_BLOCKS`` module; ``"xla"``
    (``lax.conv_general_dilated``) for the family's other convolutions (stems, 3x3s).
    """
    in_blocks = {sub for m in tm.modules() if type(m).__name__ in MECHANISM_BLOCKS
                 for sub in m.modules()}
    return {m: "ours" if m in in_blocks or m.kernel_size == (1, 1) else "xla"
            for m in tm.modules() if isinstance(m, torch.nn.Conv2d)}


def conv_shapes(tm, torch, device, batch: int, size: int) -> collections.Counter:
    """Every Conv2d call of one forward: (N, C, H, W, out, k, stride, pad, dilation, groups,
    form), ``form`` from ``conv_forms``."""
    seen: collections.Counter = collections.Counter()
    forms = conv_forms(tm, torch)

    def hook(mod, inp, out):
        n, c, h, w = inp[0].shape
        seen[(n, c, h, w, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0],
              mod.dilation[0], mod.groups, forms[mod])] += 1

    handles = [m.register_forward_hook(hook) for m in tm.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        tm.eval()(torch.zeros(batch, 3, size, size, device=device))
    for h in handles:
        h.remove()
    return seen


def conv_breakdown(tm, torch, device, *, batch: int, size: int, args,
                   mode: str = "forward") -> dict[str, Any]:
    """Each distinct convolution of the model alone, JAX vs PyTorch, times its count.

    JAX runs each as attention_jax's model does (``conv_forms``: the library's CPU forms for
    1x1 kernels and inside the attention blocks, XLA's own convolution elsewhere; before
    2026-12-03 every one was XLA's). ``mode="forward"``: the convolution; ``"train"``: its
    output and the gradients w.r.t. its input and its weight for a random cotangent
    (``jax.vjp``; torch ``autograd.grad``; before 2026-12-02 the JAX side returned the
    gradients alone, and XLA dropped the forward).
    """
    rows = []
    for shape, count in conv_shapes(tm, torch, device, batch, size).items():
        n, c, h, w, o, k, s, p, d, g, form = shape
        jax_conv = conv_general_dilated if form == "ours" else jax.lax.conv_general_dilated
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, h, w, c)).astype(np.float32)
        wt = (rng.normal(size=(k, k, c // g, o)) / np.sqrt(c // g * k * k)).astype(np.float32)

        def conv(a, b, s=s, p=p, d=d, g=g, jax_conv=jax_conv):
            return jax_conv(
                a, b, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)

        xj, wj = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(wt))
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
        wtt = torch.from_numpy(wt).permute(3, 2, 0, 1).contiguous().to(device)
        if mode == "forward":
            fj = jax.jit(conv, compiler_options=_options(args))

            def jax_step(fj=fj, xj=xj, wj=wj):
                jax.block_until_ready(fj(xj, wj))

            def torch_step(xt=xt, wtt=wtt, s=s, p=p, d=d, g=g):
                with torch.inference_mode():
                    torch.nn.functional.conv2d(xt, wtt, None, s, p, d, g)
                _sync_torch(torch, device)
        else:
            out_shape = jax.eval_shape(conv, xj, wj).shape
            ct = jax.device_put(jnp.asarray(rng.normal(size=out_shape).astype(np.float32)))
            # The output is returned with the gradients (PyTorch's step runs the forward):
            # with the gradients alone XLA would drop the convolution's forward.
            fj = jax.jit(lambda a, b, ct, conv=conv: (lambda y, pb: (y, pb(ct)))(
                *jax.vjp(conv, a, b)), compiler_options=_options(args))
            ctt = torch.from_numpy(np.array(ct)).permute(0, 3, 1, 2).contiguous().to(device)
            xt.requires_grad_(True)
            wtt.requires_grad_(True)

            def jax_step(fj=fj, xj=xj, wj=wj, ct=ct):
                jax.block_until_ready(fj(xj, wj, ct))

            def torch_step(xt=xt, wtt=wtt, ctt=ctt, s=s, p=p, d=d, g=g):
                y = torch.nn.functional.conv2d(xt, wtt, None, s, p, d, g)
                torch.autograd.grad(y, (xt, wtt), ctt)
                _sync_torch(torch, device)

        r = alternate(jax_step, torch_step, repeats=max(3, args.repeats // 2), warmup=1,
                      min_s=min(args.min_repeat_s, 0.05), settle_s=args.settle_s / 3)
        rows.append({"shape": dict(zip(("n", "c", "h", "w", "out", "k", "stride", "pad",
                                        "dilation", "groups", "form"), shape, strict=True)),
                     "count": count, "jax_s": r["jax_s"] * count,
                     "torch_s": r["torch_s"] * count})
    rows.sort(key=lambda r: r["jax_s"] - r["torch_s"], reverse=True)
    return {"batch": batch, "mode": mode, "jax_s": sum(r["jax_s"] for r in rows),
            "torch_s": sum(r["torch_s"] for r in rows), "convs": rows}


def _print_breakdown(name: str, br: dict[str, Any]) -> None:
    what = "forward" if br["mode"] == "forward" else "forward + input and weight gradients"
    print(f"{name:<14} convs B{br['batch']} ({what}): JAX {br['jax_s'] * 1e3:.0f} ms, PyTorch "
          f"{br['torch_s'] * 1e3:.0f} ms (sum of every conv alone); where JAX loses most:")
    for row in br["convs"][:4]:
        s = row["shape"]
        print(f"    {s['c']:>4}->{s['out']:<4} {s['k']}x{s['k']}/{s['stride']} d{s['dilation']} "
              f"g{s['groups']:<3} at {s['h']}x{s['w']} x{row['count']} ({s['form']}): JAX "
              f"{row['jax_s'] * 1e3:7.1f} ms, PyTorch {row['torch_s'] * 1e3:7.1f} ms")


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                            if line.startswith("Model name")), "?")
        info["cpu_flags_avx512f"] = "avx512f" in lscpu
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()
    return info


def _fmt(res: dict[str, Any]) -> str:
    j = f"{res['jax_images_per_s']:8.1f}"
    if "torch_s" not in res:
        return f"{j} {'-':>8} {'-':>6}"
    return f"{j} {res['torch_images_per_s']:8.1f} {res['ratio']:6.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    ap.add_argument("--batches", default="1,8,32", help="inference batch sizes")
    ap.add_argument("--train-batch", type=int, default=32, help="0: no training step")
    ap.add_argument("--size", type=int, default=224, help="image side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--min-repeat-s", type=float, default=0.5)
    ap.add_argument("--settle-s", type=float, default=0.3,
                    help="pause between the two sides' blocks (PyTorch's OpenMP spin)")
    ap.add_argument("--conv-breakdown", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of both sides (default: each framework's own, one per "
                         "core). 1 = single-threaded XLA (Eigen pool off) and "
                         "torch.set_num_threads(1): robust on a shared, oversubscribed machine, "
                         "where OpenMP's barriers stall when its threads are descheduled")
    ap.add_argument("--cpu-convolutions", choices=CONVOLUTION_RUNTIMES, default="ynnpack",
                    help="XLA:CPU's convolution runtime for the JAX programs "
                         "(attention_jax.cpu_compiler_options)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args(argv)
    if args.threads == 1:  # read when XLA's CPU client starts, i.e. before the first jax op
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _torch_device(torch)
    info = machine()
    info.update({"torch": torch.__version__, "torch_device": device,
                 "torch_threads": torch.get_num_threads(), "threads_flag": args.threads,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "size": args.size,
                 "cpu_convolutions": args.cpu_convolutions})
    print(json.dumps(info))
    results: dict[str, Any] = {"machine": info, "models": {}}
    batches = [int(b) for b in args.batches.split(",") if b]
    print(f"\n{'model':<14} {'what':<10} {'JAX img/s':>9} {'torch':>8} {'ratio':>6}  "
          f"(ratio = JAX time / PyTorch time)")
    for name in args.models.split(","):
        tm, variables = build_pair(name, torch, device)
        out: dict[str, Any] = {"inference": [], "train": None}
        if device is not None:  # the two compute the same function
            from attention_jax.models import create_model

            x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
            with torch.inference_mode():
                ref = tm.eval()(torch.from_numpy(x).permute(0, 3, 1, 2).to(device)).cpu()
            ours = np.asarray(jax.jit(create_model(name).apply)(variables, jnp.asarray(x)))
            out["parity_max_rel"] = float(np.abs(ours - ref.numpy()).max()
                                          / np.abs(ref.numpy()).max())
        for b in batches:
            r = inference(name, tm, variables, torch, device, batch=b, size=args.size, args=args)
            out["inference"].append(r)
            print(f"{name:<14} {'infer B' + str(b):<10} {_fmt(r)}", flush=True)
        if args.train_batch:
            r = train_step(name, tm, variables, torch, device, batch=args.train_batch,
                           size=args.size, args=args)
            out["train"] = r
            print(f"{name:<14} {'train B' + str(args.train_batch):<10} {_fmt(r)}", flush=True)
        slow = [r["batch"] for r in out["inference"] if r.get("ratio", 0) > 1.0
                and r["batch"] in (8, 32)]
        always = args.conv_breakdown == "always"
        if device is not None and (always or (args.conv_breakdown == "auto" and slow)):
            b = max(slow) if slow else max(batches)
            out["conv_breakdown"] = conv_breakdown(tm, torch, device, batch=b, size=args.size,
                                                   args=args)
            _print_breakdown(name, out["conv_breakdown"])
        train = out["train"]
        if device is not None and train and (always or (args.conv_breakdown == "auto"
                                                        and train.get("ratio", 0) > 1.0)):
            out["conv_breakdown_train"] = conv_breakdown(
                tm, torch, device, batch=args.train_batch, size=args.size, args=args,
                mode="train")
            _print_breakdown(name, out["conv_breakdown_train"])
        results["models"][name] = out
        if hasattr(os, "getloadavg"):
            results["machine"]["load_average_end"] = os.getloadavg()
        if args.json:  # after each model: a long run keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
        del tm, variables
        _trim()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
