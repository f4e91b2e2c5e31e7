"""Reporting: environment record, terminal table, ``results.json`` and PNG plots."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment", "cpu_info", "load_average", "busy_note", "source_checkout",
           "format_table", "write_json", "write_plots", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def source_checkout() -> Path | None:
    """The git checkout this ``attention_jax`` was imported from (an editable install or
    ``PYTHONPATH``), or None for an installed wheel."""
    import attention_jax

    root = Path(attention_jax.__file__).resolve().parents[1]
    if (root / ".git").exists() and (root / "pyproject.toml").is_file():
        return root
    return None


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                            "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _lscpu() -> dict[str, str]:
    """``lscpu``'s "key: value" lines (empty when lscpu is missing, e.g. on macOS)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _proc_cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:  # the first processor's block is enough
                    break
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
"""The instruction-set flags that matter for XLA:CPU, PyTorch and the native kernels."""


def cpu_info() -> dict[str, Any]:
    """The CPU this ran on: ``lscpu``'s model line, vendor, family/model, logical CPUs, and which
    of ``ISA_FLAGS`` the CPU has, with a one-word summary (``"AMX"``, ``"AVX-512"``, ``"AVX2"``
    or ``"baseline"``)."""
    ls = _lscpu()
    proc = _proc_cpuinfo()
    flags = set((ls.get("Flags") or proc.get("flags") or "").split())
    isa = {f: f in flags for f in ISA_FLAGS}
    summary = ("AMX" if isa["amx_tile"] else "AVX-512" if isa["avx512f"]
               else "AVX2" if isa["avx2"] else "baseline" if flags else "unknown")
    return {
        "model_name": ls.get("Model name") or proc.get("model name")
        or platform.processor() or platform.machine(),
        "vendor": ls.get("Vendor ID") or proc.get("vendor_id"),
        "family": ls.get("CPU family") or proc.get("cpu family"),
        "model": ls.get("Model") or proc.get("model"),
        "logical_cpus": os.cpu_count(),
        "isa": isa,
        "isa_summary": summary,
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def busy_note(env: dict[str, Any]) -> str | None:
    """A warning when other work competed for the CPUs during the run (load above the CPU
    count at its start or end), or None."""
    machine = env.get("machine", {})
    cpus = machine.get("cpu_count") or 1
    loads = [v[0] for v in (machine.get("load_average_start"), machine.get("load_average_end"))
             if v]
    if not loads or max(loads) <= cpus:
        return None
    note = (f"the machine was busy (1-minute load average up to {max(loads):.1f} on {cpus} "
            "CPUs): timings are unreliable")
    if "torch" in env:
        note += (". PyTorch's OpenMP threads spin-wait when the cores are oversubscribed "
                 "(--omp-passive makes them sleep instead)")
    return note


def environment(root: Path | None, torch_side: Any = None) -> dict[str, Any]:
    """Machine, CPU, device and library versions of this run.

    Args:
      root: a source checkout to read the git commit from (``None``: installed, no commit).
      torch_side: the PyTorch side, for its device and thread count.
    """
    import jax

    dev = jax.devices()[0]
    cpu = cpu_info()
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(root) if root is not None else None,
        "machine": {"platform": platform.platform(), "cpu": cpu["model_name"],
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_start": load_average()},
        "cpu": cpu,
        "device": {"backend": jax.default_backend(), "kind": dev.device_kind,
                   "count": jax.device_count()},
        "versions": {name: _version(name) for name in
                     ("jax", "jaxlib", "flax", "numpy", "torch", "attention-jax")},
    }
    if torch_side is not None:
        env["torch"] = {"device": torch_side.device,
                        "threads": torch_side.torch.get_num_threads()}
    return env


def _ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _mem_mb(row: dict) -> str:
    probe = _get(row, "memory_probe", "jax")
    if probe and "error" not in probe:
        b = probe.get("device_peak_bytes") or probe.get("peak_rss_bytes")
        return f"{b / 2**20:.0f}*"
    xla = _get(row, "jax", "xla_memory_bytes")
    if xla:
        b = xla.get("fwdbwd") or xla.get("fwd")
        if b:
            return f"{b / 2**20:.1f}"
    return "-"


COLUMNS = ("mechanism", "shape", "B", "dtype", "compile s", "fwd ms", "(min-max)", "img/s",
           "torch ms", "jax/pt", "f+b ms", "(min-max)", "torch ms", "jax/pt", "mem MB", "roof")
_WIDTHS = (12, 13, 4, 5, 10, 8, 15, 9, 8, 6, 8, 15, 8, 6, 7, 5)
_RIGHT = {2, 5, 7, 8, 9, 10, 12, 13, 14, 15}


def _line(cells: list[str]) -> str:
    out = []
    for i, (c, w) in enumerate(zip(cells, _WIDTHS, strict=True)):
        out.append(c.rjust(w) if i in _RIGHT else c.ljust(w))
    return " ".join(out).rstrip()


def format_table(results: dict[str, Any]) -> str:
    """The terminal table: one line per row, grouped by mechanism."""
    order = {name: i for i, name in enumerate(dict.fromkeys(r["name"] for r in results["rows"]))}
    rows = sorted(results["rows"], key=lambda r: (order[r["name"]], r["dtype"] != "float32",
                                                  r["shape"], r["batch"]))
    lines = [_line(list(COLUMNS)), "-" * (sum(_WIDTHS) + len(_WIDTHS) - 1)]
    for r in rows:
        dt = {"float32": "f32", "bfloat16": "bf16"}.get(r["dtype"], r["dtype"])
        head = [r["name"], r["shape_label"], str(r["batch"]), dt]
        if r["status"] != "ok":
            lines.append(_line(head + [f"{r['status']}: {r['note']}"[:60]] + [""] * 11))
            continue
        cells = list(head)
        comp = r["jax"].get("compile_s", {})
        cells.append("/".join(f"{comp[m]:.2f}" for m in ("fwd", "fwdbwd") if m in comp))
        for mode in ("fwd", "fwdbwd"):
            j = r["jax"].get(mode)
            t = _get(r, "torch", mode)
            cells.append(_ms(j["median_s"]) if j else "-")
            cells.append(f"({_ms(j['min_s'])}-{_ms(j['max_s'])})" if j else "")
            if mode == "fwd":
                cells.append(f"{j['images_per_s']:.0f}" if j else "-")
            cells.append(_ms(t["median_s"]) if t else "-")
            ratio = r["ratio"].get(mode)
            # '!' only where the runner found a real disagreement (after its float64 referee).
            key = "fwd" if mode == "fwd" else "grad_input"
            flag = "!" if key in r.get("disagree", ()) else ""
            cells.append(f"{ratio:.2f}{flag}" if ratio is not None else "-")
        cells.append(_mem_mb(r))
        roof = r.get("roofline")
        cells.append(f"{100 * roof['fraction']:.0f}%" if roof else "")
        lines.append(_line(cells))
    return "\n".join(lines)


LEGEND = """\
compile s: JAX trace+compile of forward / forward+backward. fwd, f+b: median time per step over
repeats (min-max), after warm-up; f+b = gradients w.r.t. input and all parameters. Repeats run
in blocks, JAX then PyTorch then back (ABBA), each block after 10 ms of untimed steps; at least
7 per step (10 with --full), more for short steps. img/s: batch / median forward. jax/pt: JAX
median / PyTorch median in the same run (< 1: JAX faster; '!' marks outputs that disagree
beyond tolerance, 1e-4 relative in float32, after a float64 PyTorch referee: a row where
PyTorch's own float32 result is as far from float64 as JAX's is not flagged, and a note says
so). mem MB: XLA's compiled buffer estimate of forward+backward (arguments + outputs +
temporaries); with --memory, the measured peak of a subprocess (RSS on CPU, device allocator
on GPU/TPU), marked '*'. roof: share of the memory-bandwidth bound achieved by the forward
(feature map read once + output written once + parameters, at the bandwidth measured at
start)."""


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results.json`` (NaN/inf become null)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    path.write_text(json.dumps(clean(results), indent=1) + "\n")


_PLOT_STYLE = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10,
               "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 10,
               "figure.titlesize": 12, "savefig.dpi": 100}
_SERIES = {("jax", "fwd"): {"color": "#1f77b4", "ls": "-", "marker": "o",
                            "label": "JAX forward"},
           ("jax", "fwdbwd"): {"color": "#1f77b4", "ls": "--", "marker": "s",
                               "label": "JAX forward+backward"},
           ("torch", "fwd"): {"color": "#d62728", "ls": "-", "marker": "o",
                              "label": "PyTorch forward"},
           ("torch", "fwdbwd"): {"color": "#d62728", "ls": "--", "marker": "s",
                                 "label": "PyTorch forward+backward"}}


def _plain_number(value: float, _pos: Any = None) -> str:
    """Tick label without exponents: 0.05, 0.2, 1, 20, 500."""
    return f"{value:g}" if value > 0 else ""


def _ratio_text(v: float) -> str:
    """A ratio in a cell: two decimals from 0.1 to 100, two significant digits outside."""
    return f"{v:.2f}" if 0.1 <= v < 100 else f"{v:.2g}"


def _log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Log axis with plain labels at decades, or at 1-2-5 steps when the data span less than
    1.5 decades (so every panel shows at least two labelled ticks); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    span = math.log10(hi / lo) if lo > 0 and hi > 0 else 0.0
    subs = (1.0,) if span >= 1.5 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_formatter(NullFormatter())


def _time_vs_batch(plt: Any, results: dict[str, Any], ok: list[dict]) -> Any:
    """One panel per (mechanism, shape, dtype): ms per step against batch size, log-log, the
    four series in fixed colours and line styles; one legend above the panels."""
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        panels[(r["name"], r["shape_label"], r["dtype"])].append(r)
    dtypes = {k[2] for k in panels}
    batches = sorted({r["batch"] for r in ok})
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.7 * ncol, 2.9 * nrow + 1.0), squeeze=False,
                             layout="constrained")
    for ax, ((name, shape, dtype), rows) in zip(axes.flat, panels.items(), strict=False):
        ys = []
        for (fw, mode), style in _SERIES.items():
            pts = sorted((r["batch"], 1e3 * _get(r, fw, mode, "median_s")) for r in rows
                         if _get(r, fw, mode, "median_s"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ms=4, lw=1.5, **style)
                ys += [p[1] for p in pts]
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        if ys:
            _log_ticks(ax.yaxis, min(ys), max(ys))
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"{name}  {shape}" + (f"  {dtype}" if len(dtypes) > 1 else ""))
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        if i % ncol == 0:
            ax.set_ylabel("ms per step")
        if i + ncol >= len(panels):
            ax.set_xlabel("batch size")
    handles = [plt.Line2D([], [], ms=5, lw=1.5, **style) for style in _SERIES.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=4 if ncol > 2 else 2,
               frameon=False)
    fig.suptitle(f"Median time per step\n{_title(results)}")
    return fig


def _ratio_heatmap(plt: Any, results: dict[str, Any], ok: list[dict]) -> Any | None:
    """JAX/PyTorch for every row: one line per (mechanism, shape, dtype), one column per
    (batch, forward | forward+backward), the ratio written in each cell; blue where JAX is
    faster, red where slower, on a log colour scale centred at 1."""
    from matplotlib.colors import LogNorm

    lines = list(dict.fromkeys((r["name"], r["shape_label"], r["dtype"]) for r in ok
                               if r.get("ratio")))
    if not lines:
        return None
    dtypes = {k[2] for k in lines}
    batches = sorted({r["batch"] for r in ok if r.get("ratio")})
    cols = [(b, m) for b in batches for m in ("fwd", "fwdbwd")]
    grid = [[math.nan] * len(cols) for _ in lines]
    for r in ok:
        key = (r["name"], r["shape_label"], r["dtype"])
        for j, (b, m) in enumerate(cols):
            if key in lines and r["batch"] == b and r["ratio"].get(m):
                grid[lines.index(key)][j] = r["ratio"][m]
    finite = [v for row in grid for v in row if math.isfinite(v) and v > 0]
    # Colours saturate beyond 16x either way; the number in the cell stays exact.
    reach = min(16.0, max(4.0, max(finite), 1 / min(finite)))
    # A few lines: the colour bar goes below, where its label has the figure's width.
    wide = len(lines) < 10
    fig, ax = plt.subplots(figsize=(max(7.5, 2.6 + 0.95 * len(cols)),
                                    (2.6 if wide else 1.5) + 0.36 * len(lines)),
                           layout="constrained")
    norm = LogNorm(vmin=1 / reach, vmax=reach, clip=True)
    image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):
                dark = abs(math.log(v)) > 0.6 * math.log(reach)
                ax.text(j, i, _ratio_text(v), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(cols)),
                  [f"B{b}\n{'fwd' if m == 'fwd' else 'f+b'}" for b, m in cols])
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(lines)), [f"{n}  {sh}" + (f"  {dt}" if len(dtypes) > 1 else "")
                                      for n, sh, dt in lines])
    ax.tick_params(length=0)
    bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02,
                       location="bottom" if wide else "right", aspect=40 if wide else 20)
    bar.set_label("JAX time / PyTorch time (< 1: JAX faster)")
    ticks = [2.0 ** k for k in range(-4, 5) if 1 / reach <= 2.0 ** k <= reach]
    bar.set_ticks(ticks, labels=[f"1/{1 / t:g}" if t < 1 else f"{t:g}" for t in ticks])
    bar.ax.minorticks_off()
    ax.set_title(f"JAX / PyTorch, median time per step\n{_title(results)}", pad=12)
    return fig


def write_plots(out_dir: Path, results: dict[str, Any]) -> list[Path]:
    """``time_vs_batch.png`` (per mechanism and shape: ms per step against batch size, JAX and
    PyTorch, forward and forward+backward, log-log) and ``ratio.png`` (JAX/PyTorch of every row,
    written in a grid of mechanism x batch size and step). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results["rows"] if r["status"] == "ok"]
    written: list[Path] = []
    if not ok:
        return written
    with plt.rc_context(_PLOT_STYLE):
        for name, make in (("time_vs_batch.png", _time_vs_batch), ("ratio.png", _ratio_heatmap)):
            fig = make(plt, results, ok)
            if fig is None:
                continue
            path = out_dir / name
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written


def _title(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    dev = env.get("device", {})
    versions = env.get("versions", {})
    where = dev.get("kind", "?")
    cpu = _get(env, "cpu", "model_name")
    if dev.get("backend") == "cpu" and cpu:
        where = f"{cpu} ({_get(env, 'cpu', 'isa_summary')}, {_get(env, 'cpu', 'logical_cpus')} "\
                "CPUs)"
    torch = versions.get("torch")
    return (f"{where}, jax {versions.get('jax')}"
            + (f", torch {torch}" if torch and any(r.get("torch") for r in results["rows"])
               else ""))
