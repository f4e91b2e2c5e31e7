"""The prepared GPU check (``benchmarks/gpu_check.py``) runs its whole pipeline on the CPU
(``--dry-run``): probe, a test phase through pytest, a sweep through the installed harness,
and a summary that says what ran. On a machine without a GPU, asking for CUDA stops at once
with a clear verdict instead of timing the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*argv: str, timeout: int = 400, env: dict | None = None):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env or os.environ.copy())


def test_dry_run_writes_the_summary_results_and_plots(tmp_path):
    proc = _run("--dry-run", "--budget", "240", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["junit.xml", "ratio.png", "results.json", "summary.json", "sweep.log",
                     "tests.log", "time_vs_batch.png"]  # flat: the device tool returns 8 files
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["platform"] == "cpu" and s["dry_run"] and s["exit_code"] == 0
    assert s["verdict"] == "all phases ran and passed" and s["within_budget"]
    assert s["environment"]["backend"] == "cpu" and s["environment"]["torch"]
    t = s["tests"]
    assert t["ran"] and t["complete"] and t["ok"] and not t["timed_out"]
    assert t["counts"]["passed"] > 10 and t["counts"]["failures"] == 0
    sw = s["sweep"]
    assert sw["ok"] and sw["rows"] == {"ok": 3, "skipped": 0, "error": 0} and not sw["disagree"]
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["name"] for r in res["rows"]} == {"se", "grid_sample", "attention"}
    assert all(r["torch"]["fwd"]["median_s"] > 0 for r in res["rows"])


def test_a_failing_test_phase_is_reported_not_hidden(tmp_path):
    bad = tmp_path / "test_fails.py"
    bad.write_text("def test_fails():\n    assert 1 == 2\n")
    out = tmp_path / "out"
    proc = _run("--dry-run", "--budget", "240", "--out", str(out), "--tests", str(bad),
                "--sweep-args", "--only se --shape 9x9x16 --batch-sizes 2 --repeats 1 "
                                "--bandwidth-mb 0 --no-plots")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["tests"]["counts"]["failures"] == 1 and s["verdict"].startswith("tests: 1 failed")


def test_asking_for_cuda_without_a_gpu_stops_with_a_clear_verdict(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = _run("--platform", "cuda", "--out", str(tmp_path), timeout=300, env=env)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert "tests" not in s and "sweep" not in s
    assert "JAX did not start" in s["verdict"] or "not a GPU" in s["verdict"], s["verdict"]


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_phase_past_its_time_is_stopped_and_its_progress_kept(tmp_path):
    gc = _module()
    log = tmp_path / "phase.log"
    res = gc._run([sys.executable, "-c", "import time; print('started', flush=True); "
                   "time.sleep(60)"], env=os.environ.copy(), timeout=2, log=log)
    assert res["timed_out"] and res["duration_s"] < 30 and "started" in log.read_text()
    log.write_text("tests/x.py ..F.s                [ 40%]\n..E.\n")
    assert gc._progress_counts(log) == {"passed": 6, "failures": 1, "errors": 1, "skipped": 1}
