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

__all__ = ["environment", "cpu_info", "source_checkout", "format_table", "write_json",
           "write_plots", "SCHEMA_VERSION"]

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
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
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
repeats (min-max), after warm-up; f+b = gradients w.r.t. input and all parameters. img/s: batch /
median forward. jax/pt: JAX median / PyTorch median in the same run, alternating (< 1: JAX
faster; '!' marks outputs that disagree beyond tolerance, 1e-4 relative in float32, after a
float64 PyTorch referee: a row where PyTorch's own float32 result is as far from float64 as
JAX's is not flagged, and a note says so). mem MB: XLA's compiled buffer
estimate of forward+backward (arguments + outputs + temporaries); with --memory, the measured
peak of a subprocess (RSS on CPU, device allocator on GPU/TPU), marked '*'. roof: share of
the memory-bandwidth bound achieved by the forward (feature map read once + output written
once + parameters, at the bandwidth measured at start)."""


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


def write_plots(out_dir: Path, results: dict[str, Any]) -> list[Path]:
    """``time_vs_batch.png`` (per mechanism: step time vs batch, JAX and PyTorch, forward and
    forward+backward, log-log) and ``ratio.png`` (JAX/PyTorch per mechanism at its largest
    measured batch). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results["rows"] if r["status"] == "ok"]
    written: list[Path] = []
    if not ok:
        return written
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        groups[r["name"]].append(r)
    names = list(groups)
    ncol = min(5, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    styles = {("jax", "fwd"): ("C0", "-"), ("jax", "fwdbwd"): ("C0", "--"),
              ("torch", "fwd"): ("C3", "-"), ("torch", "fwdbwd"): ("C3", "--")}
    for ax, name in zip(axes.flat, names, strict=False):
        series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
        for r in groups[name]:
            for fw in ("jax", "torch"):
                for mode in ("fwd", "fwdbwd"):
                    s = _get(r, fw, mode, "median_s")
                    if s:
                        series[(fw, mode, r["shape_label"], r["dtype"])].append((r["batch"], s))
        for (fw, mode, _, _), pts in series.items():
            pts.sort()
            color, ls = styles[(fw, mode)]
            ax.plot([p[0] for p in pts], [1e3 * p[1] for p in pts], color=color, ls=ls,
                    marker="o", ms=3, label=f"{fw} {'f+b' if mode == 'fwdbwd' else 'fwd'}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        shapes = sorted({r["shape_label"] for r in groups[name]})
        ax.set_title(f"{name} ({', '.join(shapes)})", fontsize=8)
        ax.set_xlabel("batch size", fontsize=7)
        ax.set_ylabel("ms / step", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles, strict=True))
    fig.legend(by_label.values(), by_label.keys(), loc="upper right", fontsize=7)
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    path = out_dir / "time_vs_batch.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    ratios = []
    for name in names:
        rs = [r for r in groups[name] if r["ratio"] and r["dtype"] == groups[name][0]["dtype"]]
        if rs:
            r = max(rs, key=lambda r: (r["batch"], r["shape"]))
            ratios.append((name, r["batch"], r["ratio"].get("fwd"), r["ratio"].get("fwdbwd")))
    if ratios:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(ratios) + 2), 3.4))
        xs = range(len(ratios))
        bars = [(idx, label, color) for idx, label, color in
                ((2, "forward", "C0"), (3, "fwd+bwd", "C1")) if any(r[idx] for r in ratios)]
        width = 0.8 / len(bars)
        for i, (idx, label, color) in enumerate(bars):
            off = (i - (len(bars) - 1) / 2) * width
            ax.bar([x + off for x in xs], [r[idx] or float("nan") for r in ratios], width,
                   label=label, color=color)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), [f"{r[0]}\nB{r[1]}" for r in ratios], fontsize=7)
        ax.set_ylabel("JAX time / PyTorch time")
        ax.set_title(f"JAX/PyTorch (< 1: JAX faster), largest batch. {_title(results)}",
                     fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "ratio.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _title(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    dev = env.get("device", {})
    jax_version = env.get("versions", {}).get("jax")
    return f"{dev.get('kind', '?')} ({dev.get('backend', '?')}), jax {jax_version}"
