"""``attention-jax bench`` (``python -m attention_jax.bench``; ``make bench`` in a checkout):
time every mechanism, JAX vs PyTorch.

Quick mode (the default): one scaled-down shape per mechanism, batch sizes 1, 8, 32, a
per-row repeat budget (at least 7 repeats, more for short steps), a per-mechanism budget and a
total time limit, so every registered mechanism is timed in about two minutes on 2 CPU cores.
``--full``: every representative shape (ResNet stages; own shapes for self-attention and
sampling), batch sizes 1, 8, 32, 128, at least 10 repeats, no time limit. ``--sweeps N`` runs
the whole sweep N times back to back and reports how much each row's ratio moved. Writes
``results.json`` and PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "spread"]

_QUICK = {"batch_sizes": "1,8,32", "min_repeats": 7, "repeat_budget_s": 0.4, "warmup": 1,
          "min_repeat_s": 0.003, "time_limit": 170.0}
_FULL = {"batch_sizes": "1,8,32,128", "min_repeats": 10, "repeat_budget_s": 3.0, "warmup": 3,
         "min_repeat_s": 0.02, "time_limit": 0.0}
_REPORT_RESERVE_S = 8.0  # writing the table, JSON and plots after the sweep


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"must be positive integers like 1,8,32, got {text!r}")
    return vals


def _positive_int(text: str) -> int:
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _dtypes(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in ("float32", "bfloat16")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"must be float32 and/or bfloat16, got {text!r}")
    return vals


def _modes(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    if not vals or any(v not in ("fwd", "fwdbwd") for v in vals):
        raise argparse.ArgumentTypeError(f"must be fwd and/or fwdbwd, got {text!r}")
    return vals


def _devices(text: str) -> int:
    if text == "all":
        return 0
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}")


def _shape(text: str):
    from attention_jax.bench.specs import parse_shape

    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from attention_jax.bench.timing import CPU_DISPATCH
    from attention_jax.cli import HelpFormatter
    from attention_jax.compiler import CONVOLUTION_RUNTIMES

    q, f = _QUICK, _FULL
    p = argparse.ArgumentParser(
        prog="attention-jax bench", formatter_class=HelpFormatter,
        description="Time every registered attention mechanism (and grid_sample, attention) in "
                    "JAX, forward and forward+backward, across batch sizes, side by side with "
                    "the PyTorch reference (needs the bench extra: "
                    "pip install \"attention-jax[bench]\").")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help=f"the default: one small shape per mechanism, batch {q['batch_sizes']}"
                           f", a {q['time_limit']:.0f} s time limit per sweep")
    size.add_argument("--full", action="store_true",
                      help=f"every representative shape, batch {f['batch_sizes']}, no time limit")
    p.add_argument("--list", action="store_true", help="list the specs and their shapes, then exit")
    p.add_argument("--only", type=lambda s: [v for v in s.split(",") if v], metavar="NAMES",
                   help="comma-separated names to run (see --list); default: all")
    p.add_argument("--batch-sizes", type=_int_list, metavar="B,B,...",
                   help=f"default: {q['batch_sizes']} (quick), {f['batch_sizes']} (full)")
    p.add_argument("--dtype", type=_dtypes, default=("float32",), metavar="DTYPES",
                   help="float32 and/or bfloat16, comma-separated; default: float32")
    p.add_argument("--modes", type=_modes, default=("fwd", "fwdbwd"), metavar="MODES",
                   help="fwd and/or fwdbwd (forward+backward w.r.t. input and parameters); "
                        "default: both")
    p.add_argument("--shape", type=_shape, metavar="HxWxC",
                   help="one shape for every spec instead of the representative shapes")
    p.add_argument("--devices", type=_devices, default=1, metavar="N|all",
                   help="shard the batch data-parallel over N devices; default: 1")
    p.add_argument("--repeats", type=_positive_int, metavar="N",
                   help="exactly N timed repeats per row and step; default: time-budgeted "
                        "(--min-repeats, more for short steps)")
    p.add_argument("--min-repeats", type=_positive_int, metavar="N",
                   help=f"fewest repeats of a budgeted row; default: {q['min_repeats']} (quick), "
                        f"{f['min_repeats']} (full)")
    p.add_argument("--repeat-budget", type=_non_negative, metavar="SECONDS",
                   help="timed seconds per row, shared by its steps, that short steps fill "
                        f"with more repeats (at most 100); default: {q['repeat_budget_s']} "
                        f"(quick), {f['repeat_budget_s']} (full)")
    p.add_argument("--warmup", type=int, metavar="N",
                   help=f"untimed steps before timing; default: {q['warmup']} (quick), "
                        f"{f['warmup']} (full)")
    p.add_argument("--min-repeat-ms", type=_non_negative, metavar="MS",
                   help="a repeat loops the step until it lasts this long; default: "
                        f"{1e3 * q['min_repeat_s']:.0f} (quick), {1e3 * f['min_repeat_s']:.0f} "
                        "(full)")
    p.add_argument("--settle-ms", type=_non_negative, default=10.0, metavar="MS",
                   help="untimed busy time before each block of repeats, so the other "
                        "framework's idle threads stop spinning first; default: %(default)s")
    p.add_argument("--time-limit", type=_non_negative, metavar="SECONDS",
                   help=f"wall-clock seconds per sweep, 0 = none; default: "
                        f"{q['time_limit']:.0f} (quick), none (full); rows that would start "
                        "past it are recorded as skipped")
    p.add_argument("--sweeps", type=_positive_int, default=1, metavar="N",
                   help="run the sweep N times back to back and report each row's spread "
                        "(max - min) / median over the sweeps; the table shows the first; "
                        "default: 1")
    p.add_argument("--fresh-processes", action="store_true",
                   help="run each sweep after the first in a new Python process (a fresh JAX "
                        "and PyTorch), so a speed that holds for a whole process, such as a "
                        "bimodal PyTorch step, shows in the spread instead of repeating in "
                        "every sweep; costs each sweep its start-up and compiles")
    p.add_argument("--memory", action="store_true",
                   help="measure peak memory of each row's step in a subprocess (peak RSS on "
                        "CPU, device peak on GPU/TPU; slow: two extra processes per row)")
    p.add_argument("--torch", choices=("auto", "cpu", "cuda", "off"), default="auto",
                   help="PyTorch side: auto = same kind of device as JAX, off = JAX only; "
                        "default: auto")
    p.add_argument("--torch-threads", type=_positive_int, metavar="N",
                   help="torch.set_num_threads for the PyTorch side; default: torch's own, "
                        "one per core, as JAX uses")
    p.add_argument("--matmul-precision", choices=("auto", "highest", "tf32"), default="auto",
                   help="float32 matmuls and convolutions on a GPU, the same on both sides: "
                        "highest = full float32 (JAX precision 'highest', PyTorch TF32 off), "
                        "tf32 = TensorFloat-32 on both; auto = highest on a GPU, nothing "
                        "changed on a CPU; default: auto")
    p.add_argument("--omp-passive", action="store_true",
                   help="set OMP_WAIT_POLICY=PASSIVE before torch is imported: PyTorch's "
                        "threads sleep at once after each parallel region instead of spinning "
                        "(steadier on a machine shared with other work; slower short PyTorch "
                        "steps on a quiet one)")
    p.add_argument("--cpu-convolutions", choices=CONVOLUTION_RUNTIMES, default="ynnpack",
                   help="the runtime of XLA:CPU's convolutions in the JAX steps "
                        "(attention_jax.cpu_compiler_options): ynnpack = what XLA picks by "
                        "itself, eigen = XLA's own convolution runtime, faster on the AMD EPYC "
                        "Zen 4 and the Intel Xeon at batch 8 and 32 (README); CPU only; "
                        "default: %(default)s")
    p.add_argument("--cpu-dispatch", choices=CPU_DISPATCH, default="async",
                   help="how JAX's CPU client runs each call: async = as JAX does unless told (a "
                        "worker thread runs it, the caller waits for the result), sync = on the "
                        "calling thread, as PyTorch's eager operations run (no hand-over "
                        "between threads: 10-55 us less per call on the 2-core Intel Xeon VM, "
                        "README); CPU only; default: %(default)s")
    p.add_argument("--bandwidth-mb", type=int, default=256, metavar="MB",
                   help="size of the copy that measures memory bandwidth, 0 = no roofline; "
                        "default: %(default)s")
    p.add_argument("--out", type=Path, default=Path("bench_results"), metavar="DIR",
                   help="output directory; default: %(default)s")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the parameters and inputs; default: %(default)s")
    return p


def _missing_package(args: argparse.Namespace) -> str | None:
    """Why the options cannot run with the installed packages (said before anything is timed),
    or None. Without torch, ``--torch auto`` alone times JAX and says so."""
    from attention_jax._extras import install_hint

    needs = {"torch": args.torch in ("cpu", "cuda"), "matplotlib": not args.no_plots,
             "tqdm": not args.no_progress}
    instead = {"torch": "--torch off", "matplotlib": "--no-plots", "tqdm": "--no-progress"}
    missing = [m for m in ("torch", "matplotlib", "tqdm") if not _importable(m)]
    fatal = [m for m in missing if needs[m]]
    if not fatal:
        return None
    also = [m for m in missing if not needs[m] and m == "torch" and args.torch == "auto"]
    what = ", ".join(fatal) + (" (and torch for the PyTorch columns)" if also else "")
    return (f"attention-jax bench needs {what}, not installed: {install_hint('bench')} "
            f"(or pass {' '.join(instead[m] for m in fatal + also)} to time JAX alone)")


def _importable(module: str) -> bool:
    from attention_jax._extras import require_spec

    try:
        require_spec(module, "bench", "attention-jax bench")
    except ImportError:
        return False
    return True


def _omp_policy(passive: bool) -> dict[str, Any]:
    """Set (with ``--omp-passive``) and record PyTorch's OpenMP wait policy; libgomp reads it
    once, when torch is imported, so a torch imported earlier keeps its own."""
    torch_loaded = "torch" in sys.modules
    if passive and not torch_loaded:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
            "requested_passive": passive,
            "effective": not (passive and torch_loaded)}


def _set_matmul_precision(choice: str, backend: str, torch_side: Any) -> dict[str, Any]:
    """Give JAX and PyTorch the same float32 matmul/convolution precision on a GPU (JAX's
    default there is TensorFloat-32, PyTorch's is full float32 for matmuls and TF32 for cuDNN
    convolutions); returns what was set."""
    import jax

    if choice == "auto":
        choice = "highest" if backend == "gpu" else "unchanged"
    if choice != "unchanged":
        tf32 = choice == "tf32"
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
        if torch_side is not None:
            torch_side.torch.backends.cuda.matmul.allow_tf32 = tf32
            torch_side.torch.backends.cudnn.allow_tf32 = tf32
    out: dict[str, Any] = {"choice": choice,
                           "jax_default_matmul_precision":
                               jax.config.jax_default_matmul_precision}
    if torch_side is not None:
        out["torch_matmul_allow_tf32"] = torch_side.torch.backends.cuda.matmul.allow_tf32
        out["torch_cudnn_allow_tf32"] = torch_side.torch.backends.cudnn.allow_tf32
    return out


def _row_key(r: dict[str, Any]) -> tuple:
    return (r["name"], r["shape_label"], r["batch"], r["dtype"])


def spread(sweeps: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """How far each row moved over back-to-back sweeps.

    Args:
      sweeps: each sweep's rows.

    Returns:
      ``{"rows": [...], "summary": {...}}``: per row and step measured in every sweep, the
      JAX/PyTorch ratios, JAX and PyTorch medians of each sweep, and their spreads
      ``(max - min) / median``; the summary gives the median, 90th percentile and largest
      ratio spread over the rows (``None`` without PyTorch columns).
    """
    by_key = [{_row_key(r): r for r in rows if r["status"] == "ok"} for rows in sweeps]
    out = []
    for key in by_key[0]:
        if not all(key in d for d in by_key):
            continue
        for mode in ("fwd", "fwdbwd"):
            rs = [d[key] for d in by_key]
            if not all(mode in r["jax"] for r in rs):
                continue
            entry: dict[str, Any] = dict(zip(("name", "shape_label", "batch", "dtype"), key,
                                             strict=True))
            entry["mode"] = mode
            for label, values in (("jax_s", [r["jax"][mode]["median_s"] for r in rs]),
                                  ("torch_s", [(r.get("torch") or {}).get(mode, {})
                                               .get("median_s") for r in rs]),
                                  ("ratio", [r["ratio"].get(mode) for r in rs])):
                if any(v is None for v in values):
                    continue
                entry[label] = values
                med = statistics.median(values)
                entry[f"{label}_spread"] = (max(values) - min(values)) / med if med else None
            out.append(entry)
    spreads = sorted(e["ratio_spread"] for e in out if e.get("ratio_spread") is not None)
    summary = None
    if spreads:
        summary = {"rows": len(spreads), "median": statistics.median(spreads),
                   "p90": spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))],
                   "max": spreads[-1]}
    return {"sweeps": len(sweeps), "rows": out, "summary": summary}


def _format_spread(sp: dict[str, Any], fresh: bool = False) -> str:
    where = " (each after the first in a new process)" if fresh else ""
    lines = [f"Spread over {sp['sweeps']} back-to-back sweeps{where}, (max - min) / median: "
             "JAX/PyTorch ratio of each sweep, then the spread of the ratio, of JAX's median "
             "and of PyTorch's median"]
    for e in sp["rows"]:
        if "ratio" not in e:
            continue
        step = "fwd" if e["mode"] == "fwd" else "f+b"
        ratios = " ".join(f"{v:.2f}" for v in e["ratio"])
        lines.append(f"  {e['name']:<12}{e['shape_label']:<14}B{e['batch']:<4}{step:<4} "
                     f"{ratios:<22} ratio {100 * e['ratio_spread']:4.0f}%  jax "
                     f"{100 * e['jax_s_spread']:4.0f}%  torch {100 * e['torch_s_spread']:4.0f}%")
    s = sp["summary"]
    if s:
        lines.append(f"ratio spread over {s['rows']} rows: median {100 * s['median']:.0f}%, "
                     f"90th percentile {100 * s['p90']:.0f}%, largest {100 * s['max']:.0f}%")
    return "\n".join(lines)


def _sweep_in_new_process(argv: list[str]) -> dict[str, Any]:
    """One sweep of the same command in a new Python process; its rows, time and process id.

    The child gets this command's arguments with ``--sweeps 1`` and its own output folder
    appended (argparse keeps an option's last value), and no plots or progress bar.

    Raises:
      ValueError: the child failed before writing its results (its exit code and the end of
        its output are in the message).
    """
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="attention-jax-bench-") as tmp:
        cmd = [sys.executable, "-m", "attention_jax.bench", *argv, "--sweeps", "1",
               "--out", tmp, "--no-plots", "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out = Path(tmp) / "results.json"
        if not out.exists():
            raise ValueError(
                f"bench: --fresh-processes: the sweep's process exited with {proc.returncode} "
                f"before writing its results: {(proc.stdout + proc.stderr)[-2000:]}")
        child = json.loads(out.read_text())
    return {"rows": child["rows"], "sweep_s": child["sweep_s"], "pid": child["pid"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (1 if any row failed, 2 for bad usage).

    Args:
      argv: command-line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Process exit code.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    t_start = time.monotonic()
    omp = _omp_policy(args.omp_passive)
    from attention_jax.bench.timing import set_cpu_dispatch

    dispatch = set_cpu_dispatch(args.cpu_dispatch)  # before JAX starts its CPU backend

    import jax

    from attention_jax.bench.report import (
        LEGEND,
        SCHEMA_VERSION,
        busy_note,
        environment,
        format_table,
        load_average,
        source_checkout,
        write_json,
        write_plots,
    )
    from attention_jax.bench.runner import Config, run_sweep
    from attention_jax.bench.specs import build_specs, shape_label
    from attention_jax.bench.torch_side import load_torch_side

    try:
        specs, spec_notes = build_specs(args.only)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    defaults = _FULL if args.full else _QUICK
    if args.list:
        for s in specs:
            full = ", ".join(shape_label(s, sh) for sh in s.full_shapes)
            print(f"{s.name:<12} {s.kind:<8} quick {shape_label(s, s.quick_shape):<14} "
                  f"full {full}{'  [roofline]' if s.memory_bound else ''}")
        for n in spec_notes:
            print(f"note: {n}")
        return 0

    missing = _missing_package(args)
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    if args.devices > jax.device_count():
        print(f"bench: --devices must be at most {jax.device_count()} (len(jax.devices())), "
              f"got {args.devices}", file=sys.stderr)
        return 2
    torch_side, torch_note = load_torch_side(args.torch, jax.default_backend())
    if torch_side is None and args.torch == "auto":
        print(f"note: {torch_note}", flush=True)
    if torch_side is not None and args.torch_threads:
        torch_side.torch.set_num_threads(args.torch_threads)
    precision = _set_matmul_precision(args.matmul_precision, jax.default_backend(), torch_side)
    time_limit = defaults["time_limit"] if args.time_limit is None else args.time_limit
    cfg = Config(
        batch_sizes=args.batch_sizes or _int_list(defaults["batch_sizes"]),
        dtypes=args.dtype, modes=args.modes, full=args.full, shape=args.shape,
        devices=args.devices,
        repeats=args.repeats,
        min_repeats=args.min_repeats or defaults["min_repeats"],
        repeat_budget_s=(defaults["repeat_budget_s"] if args.repeat_budget is None
                         else args.repeat_budget),
        settle_s=args.settle_ms / 1e3,
        warmup=defaults["warmup"] if args.warmup is None else args.warmup,
        min_repeat_s=(defaults["min_repeat_s"] if args.min_repeat_ms is None
                      else args.min_repeat_ms / 1e3),
        memory=args.memory, bandwidth_mb=args.bandwidth_mb,
        seed=args.seed, cpu_convolutions=args.cpu_convolutions,
    )
    env = environment(source_checkout(), torch_side)
    if torch_side is not None:
        env["torch"]["openmp"] = omp
    dev = env["device"]
    print(f"attention-jax bench ({'full' if args.full else 'quick'}): {len(specs)} specs on "
          f"{dev['kind']} ({dev['backend']}, {dev['count']} device(s), using "
          f"{'all' if cfg.devices == 0 else cfg.devices}); jax {env['versions']['jax']}, "
          f"flax {env['versions']['flax']}, torch "
          f"{env['versions']['torch'] if torch_side else 'off'}"
          f"{' on ' + torch_side.device if torch_side else ''}; CPU {env['cpu']['model_name']} "
          f"({env['cpu']['isa_summary']})", flush=True)
    notes = list(spec_notes) + ([torch_note] if torch_note else [])
    if args.omp_passive and not omp["effective"]:
        notes.append("--omp-passive had no effect: torch was imported before the benchmark")
    if not dispatch["effective"]:
        notes.append(f"--cpu-dispatch {args.cpu_dispatch} had no effect: JAX's CPU backend "
                     "had started before the benchmark")
    n_rows = sum(len(cfg.batch_sizes) * len(cfg.dtypes)
                 * (1 if cfg.shape or not cfg.full else len(s.full_shapes)) for s in specs)
    progress = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_rows * args.sweeps, desc="bench", unit="row", file=sys.stderr,
                        dynamic_ncols=True)
    sweeps = []
    try:
        for k in range(args.sweeps):
            limit = None
            if time_limit:
                used = time.monotonic() - t_start if k == 0 else 0.0
                limit = max(1.0, time_limit - used - _REPORT_RESERVE_S)
            if k and args.fresh_processes:
                sweeps.append(_sweep_in_new_process(raw))
                if progress is not None:
                    progress.update(n_rows)
                continue
            sweep_k = run_sweep(specs, dataclasses.replace(cfg, time_limit_s=limit),
                                torch_side=torch_side, progress=progress)
            sweeps.append({**sweep_k, "pid": os.getpid()})
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        if progress is not None:
            progress.close()
    sweep = sweeps[0]
    env["machine"]["load_average_end"] = load_average()
    busy = busy_note(env)
    if busy:
        notes.append(busy)
    if cfg.devices != 1 and torch_side is not None:
        notes.append("PyTorch runs on one device; JAX shards the batch over "
                     f"{sweep['devices']['used']} devices")
    results = {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "config": {"mode": "full" if args.full else "quick", "batch_sizes": cfg.batch_sizes,
                   "dtypes": cfg.dtypes, "modes": cfg.modes, "repeats": cfg.repeats,
                   "min_repeats": cfg.min_repeats, "max_repeats": cfg.max_repeats,
                   "repeat_budget_s": cfg.repeat_budget_s, "settle_s": cfg.settle_s,
                   "warmup": cfg.warmup, "min_repeat_s": cfg.min_repeat_s,
                   "time_limit_s": time_limit or None, "sweeps": args.sweeps,
                   "fresh_processes": args.fresh_processes,
                   "matmul_precision": precision,
                   "cpu_convolutions": cfg.cpu_convolutions,
                   "compiler_options": cfg.compiler_options,
                   "cpu_dispatch": dispatch,
                   "memory": cfg.memory, "shape": cfg.shape, "only": args.only,
                   "seed": cfg.seed},
        "devices": sweep["devices"],
        "bandwidth": sweep["bandwidth"],
        "specs": [{"name": s.name, "kind": s.kind, "memory_bound": s.memory_bound,
                   "quick_shape": s.quick_shape, "full_shapes": s.full_shapes} for s in specs],
        "notes": notes + sweep["notes"],
        "rows": sweep["rows"],
        "sweep_s": sweep["sweep_s"],
    }
    if args.sweeps > 1:
        results["spread"] = spread([s["rows"] for s in sweeps])
        results["sweeps"] = [{"sweep_s": s["sweep_s"], "rows": s["rows"], "pid": s["pid"]}
                             for s in sweeps[1:]]
    results["pid"] = os.getpid()
    print()
    print(format_table(results))
    print()
    print(LEGEND)
    if sweep["bandwidth"]:
        print(f"bandwidth: {sweep['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s "
              f"({sweep['bandwidth']['method']})")
    for r in results["rows"]:
        if r.get("torch_note"):
            notes.append(f"{r['name']} B{r['batch']} {r['dtype']}: {r['torch_note']}")
    for n in dict.fromkeys(notes + sweep["notes"]):
        print(f"note: {n}")
    if "spread" in results:
        print()
        print(_format_spread(results["spread"], args.fresh_processes))
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "results.json"]
    if not args.no_plots:
        written += write_plots(args.out, results)
    results["wall_s"] = time.monotonic() - t_start
    write_json(args.out / "results.json", results)
    print(f"wrote {', '.join(str(p) for p in written)}")
    sweep_times = ", ".join(f"{s['sweep_s']:.0f}" for s in sweeps)
    print(f"wall time {results['wall_s']:.0f} s (sweep{'s' if len(sweeps) > 1 else ''} "
          f"{sweep_times} s)")
    errors = [r for s in sweeps for r in s["rows"] if r["status"] == "error"]
    for r in errors:
        print(f"FAILED {r['name']} {r['shape_label']} B{r['batch']} {r['dtype']}: {r['note']}",
              file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
