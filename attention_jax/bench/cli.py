"""``attention-jax bench`` (``python -m attention_jax.bench``; ``make bench`` in a checkout):
time every mechanism, JAX vs PyTorch.

Quick mode (the default, ``make bench``): one scaled-down shape per mechanism, batch sizes
1, 8, 32, a few repeats, a per-mechanism budget and a total time limit, so every registered
mechanism is timed in about 3 minutes on 2 CPU cores. ``--full``: every representative shape
(ResNet stages; own shapes for self-attention and sampling), batch sizes 1, 8, 32, 128, more
repeats, no time limit. Writes ``results.json`` and PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

_QUICK = {"batch_sizes": "1,8,32", "repeats": 3, "warmup": 1, "min_repeat_s": 0.003,
          "time_limit": 170.0}
_REPORT_RESERVE_S = 8.0  # writing the table, JSON and plots after the sweep
_FULL = {"batch_sizes": "1,8,32,128", "repeats": 10, "warmup": 3, "min_repeat_s": 0.02,
         "time_limit": 0.0}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"must be positive integers like 1,8,32, got {text!r}")
    return vals


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
    p = argparse.ArgumentParser(
        prog="attention-jax bench",
        description="Time every registered attention mechanism (and grid_sample, attention) in "
                    "JAX, forward and forward+backward, across batch sizes, side by side with "
                    "the PyTorch reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="(default) one small shape per mechanism, batch 1,8,32, 3 repeats, "
                           "170 s time limit for the whole command")
    size.add_argument("--full", action="store_true",
                      help="every representative shape, batch 1,8,32,128, 10 repeats, no limit")
    p.add_argument("--list", action="store_true", help="list the specs and their shapes, then exit")
    p.add_argument("--only", type=lambda s: [v for v in s.split(",") if v],
                   help="comma-separated names to run (see --list)")
    p.add_argument("--batch-sizes", type=_int_list, help="e.g. 1,8,32,128 (default by mode)")
    p.add_argument("--dtype", type=_dtypes, default=("float32",),
                   help="float32 and/or bfloat16, comma-separated")
    p.add_argument("--modes", type=_modes, default=("fwd", "fwdbwd"),
                   help="fwd and/or fwdbwd (forward+backward w.r.t. input and parameters)")
    p.add_argument("--shape", type=_shape,
                   help="one HxWxC for every spec instead of the representative shapes")
    p.add_argument("--devices", type=_devices, default=1,
                   help="N or 'all': shard the batch data-parallel over N devices")
    p.add_argument("--repeats", type=int, help="timed repeats per row (default by mode)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default by mode)")
    p.add_argument("--min-repeat-ms", type=float,
                   help="a repeat loops the step until it lasts this long (default by mode)")
    p.add_argument("--time-limit", type=float,
                   help="wall-clock seconds for the whole command, 0 = none (default: 170 "
                        "quick, 0 full); rows that would start past it are recorded as skipped")
    p.add_argument("--memory", action="store_true",
                   help="measure peak memory of each row's step in a subprocess (peak RSS on "
                        "CPU, device peak on GPU/TPU; slow: two extra processes per row)")
    p.add_argument("--torch", choices=("auto", "cpu", "cuda", "off"), default="auto",
                   help="PyTorch side: auto = same kind of device as JAX, off = JAX only")
    p.add_argument("--torch-threads", type=int,
                   help="torch.set_num_threads for the PyTorch side (default: torch's own, "
                        "one per core, as JAX uses)")
    p.add_argument("--bandwidth-mb", type=int, default=256,
                   help="size of the copy that measures memory bandwidth (0: no roofline)")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (1 if any row failed).

    Args:
      argv: command-line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Process exit code.
    """
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    t_start = time.monotonic()

    import jax

    from attention_jax.bench.report import (
        LEGEND,
        SCHEMA_VERSION,
        environment,
        format_table,
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

    if args.devices > jax.device_count():
        print(f"bench: --devices must be at most {jax.device_count()} (len(jax.devices())), "
              f"got {args.devices}", file=sys.stderr)
        return 2
    torch_side, torch_note = load_torch_side(args.torch, jax.default_backend())
    if torch_side is not None and args.torch_threads:
        torch_side.torch.set_num_threads(args.torch_threads)
    time_limit = defaults["time_limit"] if args.time_limit is None else args.time_limit
    cfg = Config(
        batch_sizes=args.batch_sizes or _int_list(defaults["batch_sizes"]),
        dtypes=args.dtype, modes=args.modes, full=args.full, shape=args.shape,
        devices=args.devices,
        repeats=max(1, args.repeats or defaults["repeats"]),
        warmup=defaults["warmup"] if args.warmup is None else args.warmup,
        min_repeat_s=(defaults["min_repeat_s"] if args.min_repeat_ms is None
                      else args.min_repeat_ms / 1e3),
        time_limit_s=(max(1.0, time_limit - (time.monotonic() - t_start) - _REPORT_RESERVE_S)
                      if time_limit else None),
        memory=args.memory, bandwidth_mb=args.bandwidth_mb,
        seed=args.seed,
    )
    env = environment(source_checkout(), torch_side)
    dev = env["device"]
    print(f"attention-jax bench ({'full' if args.full else 'quick'}): {len(specs)} specs on "
          f"{dev['kind']} ({dev['backend']}, {dev['count']} device(s), using "
          f"{'all' if cfg.devices == 0 else cfg.devices}); jax {env['versions']['jax']}, "
          f"flax {env['versions']['flax']}, torch "
          f"{env['versions']['torch'] if torch_side else 'off'}"
          f"{' on ' + torch_side.device if torch_side else ''}", flush=True)
    notes = list(spec_notes) + ([torch_note] if torch_note else [])
    n_rows = sum(len(cfg.batch_sizes) * len(cfg.dtypes)
                 * (1 if cfg.shape or not cfg.full else len(s.full_shapes)) for s in specs)
    progress = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_rows, desc="bench", unit="row", file=sys.stderr,
                        dynamic_ncols=True)
    try:
        sweep = run_sweep(specs, cfg, torch_side=torch_side, progress=progress)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        if progress is not None:
            progress.close()
    if cfg.devices != 1 and torch_side is not None:
        notes.append("PyTorch runs on one device; JAX shards the batch over "
                     f"{sweep['devices']['used']} devices")
    results = {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "config": {"mode": "full" if args.full else "quick", "batch_sizes": cfg.batch_sizes,
                   "dtypes": cfg.dtypes, "modes": cfg.modes, "repeats": cfg.repeats,
                   "warmup": cfg.warmup, "min_repeat_s": cfg.min_repeat_s,
                   "time_limit_s": time_limit or None, "memory": cfg.memory,
                   "shape": cfg.shape, "only": args.only, "seed": cfg.seed},
        "devices": sweep["devices"],
        "bandwidth": sweep["bandwidth"],
        "specs": [{"name": s.name, "kind": s.kind, "memory_bound": s.memory_bound,
                   "quick_shape": s.quick_shape, "full_shapes": s.full_shapes} for s in specs],
        "notes": notes + sweep["notes"],
        "rows": sweep["rows"],
        "sweep_s": sweep["sweep_s"],
    }
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
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "results.json"]
    if not args.no_plots:
        written += write_plots(args.out, results)
    results["wall_s"] = time.monotonic() - t_start
    write_json(args.out / "results.json", results)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"wall time {results['wall_s']:.0f} s (sweep {sweep['sweep_s']:.0f} s)")
    errors = [r for r in results["rows"] if r["status"] == "error"]
    for r in errors:
        print(f"FAILED {r['name']} {r['shape_label']} B{r['batch']} {r['dtype']}: {r['note']}",
              file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
