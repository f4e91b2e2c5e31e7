"""The prepared GPU check (issue #15, target 7): the GPU-relevant tests, then the ``--full``
benchmark against PyTorch CUDA, within one time budget, writing JSON and plots.

Run from the repository root on a machine with JAX's CUDA build and a CUDA PyTorch::

    python3 benchmarks/gpu_check.py --out gpu_check          # about 7 minutes
    python3 benchmarks/gpu_check.py --dry-run --out /tmp/gc  # the same pipeline on the CPU

It needs the core (jax, flax, optax, numpy) and torch; the benchmark's plots want matplotlib
and the test phase pytest (a missing one is reported and its phase skipped, never faked).
Nothing else: the data and training tests (tensorflow-datasets, orbax) are not GPU-relevant and
are left out, as are the native XLA:CPU kernels' tests. The checkout is imported through
``PYTHONPATH``; nothing is installed.

Phases, each in its own process and each with its share of ``--budget``:

1. environment: the GPU (``nvidia-smi``), JAX's backend and devices, torch's CUDA device;
   a CUDA run stops here (exit 2) if JAX has no GPU, rather than timing the CPU.
2. tests (pytest, float32 at JAX precision ``highest``, GPU memory not preallocated so the
   xdist workers share the card): every test outside ``tests/data``, ``tests/train``, the
   notebooks, packaging, README and harness tests, and ``-k "not native"``. Stopped at its
   time share; the counts so far are kept.
3. the sweep: ``attention-jax bench --full --torch cuda`` (same float32 precision on both
   sides, ``--matmul-precision highest``; batch 128, 32, then 8) with the rest of the budget as
   its time limit; rows that do not fit are recorded as skipped.

Writes into ``--out`` (at most 7 files, no subfolders): ``summary.json`` (what ran, counts,
times, the verdict), ``tests.log``, ``junit.xml``, ``sweep.log``, ``results.json``,
``time_vs_batch.png`` and ``ratio.png``. Exit code 0 when every phase ran and passed, 1 when a
phase failed or could not run (the summary's verdict says which), 2 when the machine cannot run
the check at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Test paths that need extras absent from a GPU image, or that test the CPU machine itself.
NOT_GPU = ("tests/data", "tests/train", "tests/test_notebooks.py", "tests/test_packaging.py",
           "tests/test_readme.py", "tests/benchmarks")
# Largest batch first: the sweep runs batch-size-major, so the rows a GPU is for come first
# and the time limit, if it bites, skips the small batches.
SWEEP_ARGS = ("--full", "--batch-sizes", "128,32,8", "--repeat-budget", "0.5", "--warmup", "2",
              "--min-repeat-ms", "5")
DRY_TESTS = ("tests/test_torch_reference.py",)
DRY_SWEEP_ARGS = ("--only", "se,grid_sample,attention", "--shape", "9x9x16", "--batch-sizes",
                  "2", "--repeats", "1", "--warmup", "0", "--min-repeat-ms", "0",
                  "--bandwidth-mb", "0")


def _env(platform: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cuda" if platform == "cuda" else "cpu"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # several processes share one GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], *, env: dict[str, str], timeout: float, log: Path) -> dict[str, Any]:
    """Run a phase, its output to ``log``; stopped (not failed) at ``timeout``."""
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
            timed_out = True
    return {"cmd": cmd, "rc": rc, "timed_out": timed_out,
            "duration_s": round(time.monotonic() - t0, 1)}


_PROBE = """
import json, jax
out = {"jax": jax.__version__, "backend": jax.default_backend(),
       "devices": [str(d) for d in jax.devices()],
       "device_kind": jax.devices()[0].device_kind}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["torch_device"] = torch.cuda.get_device_name(0)
except ImportError:
    out["torch"] = None
print("PROBE " + json.dumps(out))
"""


def probe(platform: str, out: Path) -> dict[str, Any]:
    """Phase 1: what this machine has."""
    env = _env(platform)
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform,
                            "pytest": importlib.util.find_spec("pytest") is not None,
                            "xdist": importlib.util.find_spec("xdist") is not None,
                            "matplotlib": importlib.util.find_spec("matplotlib") is not None}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    if proc.returncode or not line:
        info["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    else:
        info.update(json.loads(line[-1][6:]))
    return info


def _junit_counts(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _progress_counts(log: Path) -> dict[str, int]:
    """Counts from pytest's progress dots, for a run stopped before its summary."""
    text = log.read_text(errors="replace") if log.exists() else ""
    line = r"^(?:\S+\.py )?([.FEsxX]+)\s*(?:\[\s*\d+%\])?$"  # -q, or with the file name
    marks = "".join(m.group(1) for m in re.finditer(line, text, re.M))
    return {"passed": marks.count("."), "failures": marks.count("F"),
            "errors": marks.count("E"), "skipped": marks.count("s")}


def run_tests(platform: str, out: Path, timeout: float, paths: list[str] | None,
              workers: int) -> dict[str, Any]:
    """Phase 2: the GPU-relevant tests."""
    if importlib.util.find_spec("pytest") is None:
        return {"ran": False, "reason": "pytest is not installed on this machine"}
    env = _env(platform)
    if platform == "cuda":
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # the tests' float32 tolerances
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not native",
           f"--junitxml={out / 'junit.xml'}"]
    if workers > 1 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(workers)]
    if paths:
        cmd += paths
    else:
        cmd += ["tests"] + [f"--ignore={p}" for p in NOT_GPU]
    res = _run(cmd, env=env, timeout=timeout, log=out / "tests.log")
    counts = _junit_counts(out / "junit.xml")
    res.update(ran=True, complete=counts is not None and not res["timed_out"],
               counts=counts or _progress_counts(out / "tests.log"))
    res["ok"] = res["complete"] and res["rc"] == 0
    return res


def run_sweep(platform: str, out: Path, time_limit: float, args: list[str]) -> dict[str, Any]:
    """Phase 3: the benchmark against PyTorch on the same device."""
    torch_dev = "cuda" if platform == "cuda" else "cpu"
    cmd = [sys.executable, "-m", "attention_jax.bench", *args, "--torch", torch_dev,
           "--matmul-precision", "highest" if platform == "cuda" else "auto",
           "--time-limit", f"{max(time_limit, 10.0):.0f}", "--no-progress", "--out", str(out)]
    if importlib.util.find_spec("matplotlib") is None:
        cmd.append("--no-plots")
    res = _run(cmd, env=_env(platform), timeout=time_limit + 60, log=out / "sweep.log")
    path = out / "results.json"
    if path.exists():
        rows = json.loads(path.read_text())["rows"]
        res["rows"] = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
        res["disagree"] = [f"{r['name']} {r['shape_label']} B{r['batch']}" for r in rows
                           if r.get("disagree")]
    res["ok"] = res["rc"] == 0 and not res["timed_out"] and path.exists()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="output directory")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for the whole check (default %(default)s)")
    p.add_argument("--tests-share", type=float, default=0.4,
                   help="share of the budget left after the probe that the tests get "
                        "(default %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="pytest-xdist workers (default 8)")
    p.add_argument("--platform", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry-run", action="store_true",
                   help="the pipeline on the CPU with one small test file and a tiny sweep "
                        "(what CI runs)")
    p.add_argument("--tests", nargs="*", help="test paths instead of the GPU-relevant set")
    p.add_argument("--sweep-args", help="harness arguments instead of the full sweep's "
                                        f"({' '.join(SWEEP_ARGS)})")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    platform = "cpu" if args.dry_run else args.platform
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"platform": platform, "dry_run": args.dry_run,
                               "budget_s": args.budget}

    def finish(code: int) -> int:
        summary["total_s"] = round(time.monotonic() - t0, 1)
        summary["within_budget"] = summary["total_s"] <= args.budget + 30
        summary["exit_code"] = code
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps({k: summary[k] for k in ("exit_code", "total_s", "within_budget")}))
        return code

    env_info = probe(platform, out)
    summary["environment"] = env_info
    print(f"gpu_check: {json.dumps(env_info)}", flush=True)
    if "error" in env_info:
        summary["verdict"] = f"JAX did not start on {platform}: {env_info['error']}" + (
            " (install JAX's CUDA build: pip install -U \"jax[cuda12]\")"
            if platform == "cuda" else "")
        return finish(2)
    if platform == "cuda" and env_info.get("backend") != "gpu":
        summary["verdict"] = (f"JAX runs on {env_info.get('backend')!r}, not a GPU: install "
                              "JAX's CUDA build (pip install -U \"jax[cuda12]\")")
        return finish(2)
    if platform == "cuda" and not env_info.get("torch_cuda"):
        summary["verdict"] = "torch has no CUDA device here: the PyTorch columns need one"
        return finish(2)

    left = args.budget - (time.monotonic() - t0)
    tests = run_tests(platform, out, left * args.tests_share,
                      list(DRY_TESTS) if args.dry_run and args.tests is None else args.tests,
                      1 if args.dry_run else args.workers)
    summary["tests"] = tests
    brief = {k: tests.get(k) for k in ("ran", "rc", "timed_out", "duration_s", "counts", "reason")}
    print(f"gpu_check tests: {json.dumps(brief)}", flush=True)

    left = args.budget - (time.monotonic() - t0) - 15  # writing the summary
    sweep_args = (args.sweep_args.split() if args.sweep_args
                  else list(DRY_SWEEP_ARGS if args.dry_run else SWEEP_ARGS))
    sweep = run_sweep(platform, out, left, sweep_args)
    summary["sweep"] = sweep
    brief = {k: sweep.get(k) for k in ("rc", "timed_out", "duration_s", "rows", "disagree")}
    print(f"gpu_check sweep: {json.dumps(brief)}", flush=True)

    problems = []
    if not tests.get("ran"):
        problems.append(f"tests not run ({tests.get('reason')})")
    elif not tests["ok"]:
        c = tests["counts"]
        problems.append(f"tests: {c.get('failures', 0)} failed, {c.get('errors', 0)} errors"
                        + (", stopped at the time limit" if tests["timed_out"] else ""))
    if not sweep["ok"]:
        problems.append(f"sweep exit {sweep['rc']}" + (" (timed out)" if sweep["timed_out"]
                                                       else ""))
    summary["verdict"] = "; ".join(problems) or "all phases ran and passed"
    return finish(1 if problems else 0)


if __name__ == "__main__":
    raise SystemExit(main())
