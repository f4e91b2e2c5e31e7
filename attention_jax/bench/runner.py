"""The sweep: every spec x shape x batch size x dtype, JAX and PyTorch in alternating blocks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attention_jax.bench.specs import Case, Shape, Spec, make_case, shape_label
from attention_jax.bench.timing import (
    Timer,
    measure_bandwidth,
    plan_repeats,
    roofline,
    summarize,
    time_blocks,
)
from attention_jax.compiler import cpu_compiler_options

__all__ = ["Config", "run_sweep", "place", "jax_steps", "sharding_check", "rel_diff",
           "rel_diff_bulk", "MODES"]

MODES = ("fwd", "fwdbwd")
# Relative tolerances of the sanity checks: JAX vs PyTorch, and sharded vs one device.
_TOL = {"float32": 1e-4, "bfloat16": 5e-2}
_SHARD_TOL = {"float32": 1e-5, "bfloat16": 2e-2}


@dataclasses.dataclass
class Config:
    """Settings of one sweep (see ``attention-jax bench --help`` for each flag)."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = MODES
    full: bool = False
    shape: Shape | None = None
    devices: int = 1
    repeats: int | None = None  # a fixed count per timer; None: time-budgeted (below)
    min_repeats: int = 7
    max_repeats: int = 100
    repeat_budget_s: float = 0.4  # per row, shared by its timers
    settle_s: float = 0.01
    warmup: int = 2
    min_repeat_s: float = 0.005
    time_limit_s: float | None = None
    memory: bool = False
    bandwidth_mb: int = 256
    seed: int = 0
    # XLA:CPU's convolution runtime for the JAX steps (attention_jax.cpu_compiler_options).
    cpu_convolutions: str = "ynnpack"

    @property
    def compiler_options(self) -> dict[str, str]:
        """The JAX steps' ``compiler_options`` (empty unless ``cpu_convolutions`` changes one)."""
        return cpu_compiler_options(self.cpu_convolutions)


def _shapes(spec: Spec, cfg: Config) -> tuple[Shape, ...]:
    if cfg.shape is not None:
        h, w, c = cfg.shape
        # A uniform HxWxC for all specs (tests, smoke runs); attention takes H*W tokens of C.
        return ((1, h * w, c),) if spec.name == "attention" else (cfg.shape,)
    return spec.full_shapes if cfg.full else (spec.quick_shape,)


def place(case: Case, devices: Sequence[jax.Device]) -> dict[str, tuple[Any, ...]]:
    """Put a case on the devices; returns the arguments of each step (see ``jax_steps``).

    One device: everything on it. Several: a 1-D ``Mesh`` named ``"data"``; parameters get
    ``NamedSharding(mesh, P())`` (replicated) and the inputs and the cotangent
    ``NamedSharding(mesh, P("data"))`` along their batch axis (data parallel; XLA inserts the
    all-reduce of the parameter gradients).
    """
    if len(devices) == 1:
        put = lambda a, axis: jax.device_put(a, devices[0])
        params = jax.device_put(case.params, devices[0])
    else:
        mesh = Mesh(np.asarray(devices), ("data",))

        def put(a, axis):
            spec = [None] * a.ndim
            spec[axis] = "data"
            return jax.device_put(a, NamedSharding(mesh, PartitionSpec(*spec)))

        params = jax.device_put(case.params, NamedSharding(mesh, PartitionSpec()))
    inputs = tuple(put(x, axis) for x, axis in zip(case.inputs, case.batch_axes, strict=True))
    cot = put(case.cotangent, 0)
    return {"fwd": (params, *inputs), "fwdbwd": (params, cot, *inputs)}


def jax_steps(case: Case) -> dict[str, Callable[..., Any]]:
    """The two pure steps: ``fwd(params, *inputs) -> y`` and
    ``fwdbwd(params, cot, *inputs) -> (y, (d params, d input, ...))``, the training-step pattern
    (output kept, cotangent pulled back to the parameters and every input)."""

    def fwdbwd(params, cot, *inputs):
        y, pullback = jax.vjp(case.fwd, params, *inputs)
        return y, pullback(cot)

    return {"fwd": case.fwd, "fwdbwd": fwdbwd}


def rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / max |b| over all leaves of two pytrees (0 when both are zero)."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        scale = max(float(np.abs(y).max(initial=0.0)), 1e-30)
        worst = max(worst, float(np.abs(x - y).max(initial=0.0)) / scale)
    return worst


def rel_diff_bulk(a: Any, b: Any, q: float = 0.999) -> float:
    """The ``q``-quantile of |a - b| / max |b| over all elements of two pytrees: ``rel_diff``
    without its worst 0.1%, i.e. blind to a ReLU input near 0 that two float32 computations
    round to opposite sides (which changes the gradient in that unit's small neighbourhood)."""
    diffs, scale = [], 1e-30
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        diffs.append(np.abs(x - y).ravel())
        scale = max(scale, float(np.abs(y).max(initial=0.0)))
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    return float(np.quantile(d, q)) / scale


def sharding_check(case: Case, devices: Sequence[jax.Device], modes: Sequence[str] = MODES,
                   sharded: dict[str, Any] | None = None,
                   compiler_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Compare the sharded steps with the same steps on one device (values and gradients).

    Args:
      case: the case.
      devices: the mesh's devices (the reference runs on ``devices[0]`` alone).
      modes: which steps to compare.
      sharded: already computed sharded outputs per mode (computed here when missing).
      compiler_options: the steps' ``jax.jit`` compiler options (``Config.compiler_options``).

    Returns:
      ``{"max_rel_diff": {mode: float}, "output_devices": int, "ok": bool}``.
    """
    steps = jax_steps(case)
    sharded = dict(sharded or {})
    sharded_args = place(case, devices)
    single_args = place(case, devices[:1])
    diffs = {}
    for mode in modes:
        step = jax.jit(steps[mode], compiler_options=compiler_options)
        if mode not in sharded:
            sharded[mode] = step(*sharded_args[mode])
        diffs[mode] = rel_diff(sharded[mode], step(*single_args[mode]))
    first = jax.tree_util.tree_leaves(sharded[modes[0]])[0]
    return {"max_rel_diff": diffs, "output_devices": len(first.sharding.device_set),
            "ok": max(diffs.values()) <= _SHARD_TOL[case.dtype]}


def _xla_memory(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _device_peak(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def memory_probe(spec: Spec, shape: Shape, batch: int, dtype: str, framework: str, mode: str,
                 seed: int, timeout_s: float = 600,
                 cpu_convolutions: str = "ynnpack") -> dict[str, Any]:
    """Peak memory of one step, measured in a fresh subprocess (``attention_jax.bench.memprobe``).

    Returns the probe's JSON (``peak_rss_bytes``, ``rss_before_step_bytes``, ``device_peak_bytes``)
    or ``{"error": ...}``.
    """
    request = {"name": spec.name, "shape": list(shape), "batch": batch, "dtype": dtype,
               "framework": framework, "mode": mode, "seed": seed,
               "cpu_convolutions": cpu_convolutions}
    try:
        proc = subprocess.run([sys.executable, "-m", "attention_jax.bench.memprobe",
                               json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def _new_row(spec: Spec, shape: Shape, batch: int, dtype: str, n_devices: int,
             status: str = "ok", note: str = "") -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "shape": list(shape),
            "shape_label": shape_label(spec, shape), "batch": batch, "dtype": dtype,
            "devices": n_devices, "status": status, "note": note, "jax": {}, "torch": None,
            "ratio": {}, "roofline": None, "sharding_check": None}


def _compared(case: Case, warm: dict) -> dict[str, tuple[Any, Any]]:
    """{"fwd": (JAX output, torch output), "grad_input": (JAX d input, torch d input)} for the
    modes both sides ran, in JAX's layout."""
    to_jax = case.torch_to_jax_layout
    pairs = {}
    if ("jax", "fwd") in warm and ("torch", "fwd") in warm:
        pairs["fwd"] = (warm[("jax", "fwd")], to_jax(warm[("torch", "fwd")]))
    if ("jax", "fwdbwd") in warm and ("torch", "fwdbwd") in warm:
        # jax: (y, (d params, d input0, ...)); torch: (y, (d input0, ..., d params...)).
        pairs["grad_input"] = (warm[("jax", "fwdbwd")][1][1],
                               to_jax(warm[("torch", "fwdbwd")][1][0]))
    return pairs


def _check_against_torch(row: dict[str, Any], case: Case, warm: dict, notes: list[str],
                         torch_side: Any = None) -> None:
    """Record how far the JAX output (and input gradient) is from PyTorch's: same weights, so a
    large difference means the two sides do not compute the same thing.

    A float32 difference above tolerance (max-abs relative) is refereed in float64 (PyTorch,
    same weights, inputs and cotangent) with ``rel_diff_bulk`` (all but the worst 0.1% of
    elements): a gradient differs in a small neighbourhood whenever the two float32 sides round
    a ReLU input that is ~0 to opposite signs (seen: ``sk`` B32, a pre-activation of 1e-6), and
    some random-weight cases are ill-conditioned enough that PyTorch's own float32 result is
    ~1e-2 from its float64 one. The row is flagged (``disagree``) only if JAX is further from
    float64 than ``max(tol, 2 x PyTorch float32's distance)`` by that measure.
    """
    pairs = _compared(case, warm)
    if not pairs:
        return
    checks = {mode: rel_diff(j, t) for mode, (j, t) in pairs.items()}
    row["torch_max_rel_diff"] = checks
    tol = _TOL[case.dtype]
    bad = {k: v for k, v in checks.items() if v > tol}
    if not bad:
        return
    ref64 = _torch_float64(case, pairs) if case.dtype == "float32" and torch_side else None
    if ref64 is not None:
        referee = {mode: {"jax": rel_diff_bulk(j, ref64[mode]),
                          "torch_float32": rel_diff_bulk(t, ref64[mode])}
                   for mode, (j, t) in pairs.items()}
        row["float64_referee"] = referee
        bad = {k: v for k, v in bad.items()
               if referee[k]["jax"] > max(tol, 2 * referee[k]["torch_float32"])}
        if not bad:
            jax64 = max(r["jax"] for r in referee.values())
            torch64 = max(r["torch_float32"] for r in referee.values())
            notes.append(f"float32 max-abs difference {max(checks.values()):.1e} from torch, "
                         f"but the bulk (99.9%) is as close to torch float64 as torch float32 "
                         f"is (JAX {jax64:.1e}, torch f32 {torch64:.1e}): a ReLU kink or "
                         f"conditioning")
            return
    row["disagree"] = sorted(bad)
    notes.append(f"JAX and torch disagree (max rel {max(bad.values()):.1e})")


def _torch_float64(case: Case, pairs: dict[str, Any]) -> dict[str, Any] | None:
    """PyTorch's output and input gradient in float64 (same weights, inputs and cotangent), in
    JAX's layout, for the modes in ``pairs``."""
    if case.torch_fwd is None:
        return None
    import copy

    import torch

    fwd = case.torch_fwd
    if isinstance(fwd, torch.nn.Module):
        fwd = copy.deepcopy(fwd).double()
    inputs = [t.detach().double().requires_grad_(True) for t in case.torch_inputs]
    y64 = fwd(*inputs)
    out = {"fwd": case.torch_to_jax_layout(y64.detach())}
    if "grad_input" in pairs:
        (g64,) = torch.autograd.grad(y64, inputs[:1], case.torch_cotangent.double())
        out["grad_input"] = case.torch_to_jax_layout(g64)
    return out


def _run_row(spec: Spec, shape: Shape, batch: int, dtype: str, cfg: Config,
             devices: Sequence[jax.Device], torch_side: Any, bandwidth: dict | None,
             row_budget_s: float) -> dict[str, Any]:
    row = _new_row(spec, shape, batch, dtype, len(devices))
    if batch % len(devices):
        row.update(status="skipped", note=f"batch {batch} not divisible by {len(devices)} devices")
        return row
    t_row = time.monotonic()
    case = make_case(spec, shape, batch, dtype, seed=cfg.seed, torch_side=torch_side)
    args = place(case, devices)
    steps = jax_steps(case)
    timers: list[tuple[str, str, Timer]] = []
    compile_s, xla_bytes = {}, {}
    for mode in cfg.modes:
        t0 = time.perf_counter()
        compiled = jax.jit(steps[mode], compiler_options=cfg.compiler_options).lower(
            *args[mode]).compile()
        compile_s[mode] = time.perf_counter() - t0
        xla_bytes[mode] = _xla_memory(compiled)
        timers.append(("jax", mode, Timer(
            lambda c=compiled, a=args[mode]: jax.block_until_ready(c(*a)),
            min_repeat_s=cfg.min_repeat_s)))
    torch_notes = []
    if torch_side is not None and case.torch_fwd is not None:
        for mode in cfg.modes:
            step = torch_side.forward_step if mode == "fwd" else torch_side.fwdbwd_step
            timers.append(("torch", mode, Timer(lambda s=step: s(case),
                                                min_repeat_s=cfg.min_repeat_s)))
    elif torch_side is not None:
        torch_notes.append(case.torch_note)

    # Warm-up (first call after compile; torch's allocator) and calibration of each timer.
    warm = {}
    for fw, mode, timer in list(timers):
        try:
            warm[(fw, mode)] = timer.warmup(cfg.warmup)
        except Exception as e:  # a torch failure (e.g. an op without bf16) keeps the JAX row
            if fw == "jax":
                raise
            torch_notes.append(f"torch {mode} failed: {type(e).__name__}: {str(e)[:120]}")
            timers.remove((fw, mode, timer))
    if len(devices) > 1:
        row["sharding_check"] = sharding_check(case, devices, cfg.modes,
                                               {m: warm[("jax", m)] for m in cfg.modes},
                                               cfg.compiler_options)
        if not row["sharding_check"]["ok"]:
            row["status"] = "error"
            row["note"] = f"sharded != single device: {row['sharding_check']['max_rel_diff']}"
    _check_against_torch(row, case, warm, torch_notes, torch_side)
    del warm

    # Two rounds of blocks in ABBA order (JAX fwd, JAX f+b, torch fwd, torch f+b; then back),
    # each block after an untimed settle; round two is dropped when the row is over its budget.
    only = [t for _, _, t in timers]
    counts = plan_repeats(only, fixed=cfg.repeats, min_repeats=cfg.min_repeats,
                          max_repeats=cfg.max_repeats, budget_s=cfg.repeat_budget_s)
    if not time_blocks(only, counts, settle_s=cfg.settle_s, deadline=t_row + row_budget_s):
        row["note"] = f"first half of the planned repeats only (row budget {row_budget_s:.0f} s)"

    row["jax"] = {"compile_s": compile_s, "xla_memory_bytes": xla_bytes}
    torch_res: dict[str, Any] = {}
    for fw, mode, timer in timers:
        (row["jax"] if fw == "jax" else torch_res)[mode] = summarize(timer.samples, batch,
                                                                     timer.number)
    if any(m in torch_res for m in MODES):
        row["torch"] = {**torch_res, "device": torch_side.device}
        for mode in cfg.modes:
            if mode in torch_res:
                row["ratio"][mode] = row["jax"][mode]["median_s"] / torch_res[mode]["median_s"]
    if torch_notes:
        row["torch_note"] = "; ".join(n for n in torch_notes if n)
    peak = _device_peak(devices[0])
    if peak is not None:  # process-wide high-water mark so far (use --memory for one row's)
        row["jax"]["device_peak_bytes_process"] = peak
    if spec.memory_bound and bandwidth and "fwd" in row["jax"]:
        row["roofline"] = roofline(case.io_bytes + case.param_bytes,
                                   bandwidth["bytes_per_s"] * len(devices),
                                   row["jax"]["fwd"]["median_s"])
    if cfg.memory:
        mode = "fwdbwd" if "fwdbwd" in cfg.modes else "fwd"
        row["memory_probe"] = {
            fw: {**memory_probe(spec, shape, batch, dtype, fw, mode, cfg.seed,
                                cpu_convolutions=cfg.cpu_convolutions), "mode": mode}
            for fw in ("jax", "torch") if fw == "jax" or row["torch"]}
    row["wall_s"] = time.monotonic() - t_row
    return row


def run_sweep(specs: Sequence[Spec], cfg: Config, *, torch_side: Any = None,
              progress: Any = None) -> dict[str, Any]:
    """Run every row; returns ``{"rows", "bandwidth", "notes", "devices", "sweep_s"}``.

    Rows run batch-size-major (every spec at the smallest batch first), so under a time limit
    every mechanism still gets its small-batch rows. With a time limit, each spec also gets a
    budget (twice its fair share); rows past the limit or the budget are recorded as skipped
    with the reason, never silently dropped.

    Args:
      specs: what to time (``attention_jax.bench.specs.build_specs``).
      cfg: sweep settings.
      torch_side: ``attention_jax.bench.torch_side.TorchSide`` or None for JAX only.
      progress: a tqdm-like object with ``update()``/``set_postfix_str()``, or None.
    """
    start = time.monotonic()
    all_devices = jax.devices()
    n = len(all_devices) if cfg.devices <= 0 else cfg.devices
    if n > len(all_devices):
        raise ValueError(f"bench: --devices must be at most {len(all_devices)} "
                         f"(len(jax.devices())), got {n}")
    devices = all_devices[:n]
    bandwidth = None
    if any(s.memory_bound for s in specs) and "fwd" in cfg.modes and cfg.bandwidth_mb > 0:
        bandwidth = measure_bandwidth(cfg.bandwidth_mb, device=devices[0])

    plan = [(dtype, batch, spec, shape) for dtype in cfg.dtypes for batch in cfg.batch_sizes
            for spec in specs for shape in _shapes(spec, cfg)]
    per_spec = {s.name: sum(1 for p in plan if p[2].name == s.name) for s in specs}
    spec_budget = (math.inf if cfg.time_limit_s is None
                   else max(5.0, 2.0 * cfg.time_limit_s / max(len(specs), 1)))
    spent = dict.fromkeys(per_spec, 0.0)
    last_row_s: dict[str, float] = {}
    rows = []
    for dtype, batch, spec, shape in plan:
        if progress is not None:
            progress.set_postfix_str(f"{spec.name} {shape_label(spec, shape)} B{batch} {dtype}")
        # A row is not started if, costing what this spec's last row cost, it would end past the
        # limit (a lower bound: larger batches cost more).
        expected_end = time.monotonic() - start + last_row_s.get(spec.name, 0.0)
        if cfg.time_limit_s is not None and expected_end > cfg.time_limit_s:
            row = _new_row(spec, shape, batch, dtype, n, "skipped",
                           "time limit reached")
        elif spent[spec.name] > spec_budget:
            row = _new_row(spec, shape, batch, dtype, n, "skipped",
                           f"mechanism budget {spec_budget:.0f} s spent")
        else:
            t0 = time.monotonic()
            try:
                row = _run_row(spec, shape, batch, dtype, cfg, devices, torch_side, bandwidth,
                               spec_budget / per_spec[spec.name])
            except Exception as e:  # one broken row must not end the sweep
                msg = (str(e).strip().splitlines() or [""])[0][:200]
                row = _new_row(spec, shape, batch, dtype, n, "error", f"{type(e).__name__}: {msg}")
            last_row_s[spec.name] = time.monotonic() - t0
            spent[spec.name] += last_row_s[spec.name]
        rows.append(row)
        if progress is not None:
            progress.update(1)
    notes = []
    skipped = sum(r["status"] == "skipped" for r in rows)
    if skipped:
        notes.append(f"{skipped} rows skipped (time limit, mechanism budget or batch not "
                     "divisible by the devices); their notes say which")
    return {"rows": rows, "bandwidth": bandwidth, "notes": notes,
            "devices": {"used": n, "available": len(all_devices),
                        "kind": devices[0].device_kind, "platform": devices[0].platform},
            "sweep_s": time.monotonic() - start}
