"""The benchmark harness's own logic on a tiny sweep (no timing is asserted).

Every registered mechanism runs at the registry contract's shape (9x9x32, which each mechanism
must accept), forward only, so the sweep stays cheap as the registry grows; forward+backward,
PyTorch parity of the timed functions and the memory probe are checked on ``se``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attention_jax as aj
from attention_jax.bench.cli import build_parser, main
from attention_jax.bench.report import SCHEMA_VERSION, format_table
from attention_jax.bench.runner import rel_diff
from attention_jax.bench.specs import (
    FUNCTIONAL_SPECS,
    MEMORY_BOUND,
    QUICK_SHAPE,
    RESNET_STAGES,
    SHAPE_OVERRIDES,
    build_specs,
    parse_shape,
    shapes_for,
)
from attention_jax.bench.timing import roofline, set_cpu_dispatch, summarize
from attention_jax.torch_reference.registry import REFERENCES

REPO = Path(__file__).resolve().parents[2]
TINY = ["--shape", "9x9x32", "--repeats", "1", "--warmup", "0", "--min-repeat-ms", "0",
        "--bandwidth-mb", "8", "--torch-threads", "1"]
FUNCTIONS = [f for f in FUNCTIONAL_SPECS if hasattr(aj.functional, f)]
ROW_KEYS = {"name", "kind", "shape", "shape_label", "batch", "dtype", "devices", "status", "note",
            "jax", "torch", "ratio", "roofline", "sharding_check"}
STAT_KEYS = {"median_s", "min_s", "max_s", "repeats", "number", "images_per_s"}


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_sweep_every_mechanism_schema(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([*TINY, "--modes", "fwd", "--batch-sizes", "2", "--no-plots", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = _load(out)
    assert res["schema_version"] == SCHEMA_VERSION
    env = res["environment"]
    assert env["versions"]["jax"] and env["versions"]["flax"] and env["versions"]["torch"]
    assert env["device"]["backend"] == "cpu" and env["machine"]["cpu_count"] >= 1
    assert env["date"][:2] == "20" and "git_commit" in env
    assert res["config"]["batch_sizes"] == [2] and res["config"]["modes"] == ["fwd"]

    names = {r["name"] for r in res["rows"]}
    assert names == set(aj.list_attention()) | set(FUNCTIONS)
    assert len(res["rows"]) == len(names)
    for r in res["rows"]:
        assert ROW_KEYS <= set(r), (r["name"], ROW_KEYS - set(r))
        assert r["status"] == "ok", (r["name"], r["note"])
        assert STAT_KEYS <= set(r["jax"]["fwd"]) and "fwdbwd" not in r["jax"]
        assert r["jax"]["fwd"]["median_s"] > 0 and r["jax"]["compile_s"]["fwd"] > 0
        assert r["jax"]["fwd"]["min_s"] <= r["jax"]["fwd"]["median_s"] <= r["jax"]["fwd"]["max_s"]
        assert r["jax"]["xla_memory_bytes"]["fwd"] > 0
        if r["name"] in REFERENCES or r["kind"] == "function":
            assert STAT_KEYS <= set(r["torch"]["fwd"]) and r["ratio"]["fwd"] > 0
            # Same weights on both sides: the timed functions compute the same thing.
            assert r["torch_max_rel_diff"]["fwd"] < 1e-4, r["name"]
        assert (r["roofline"] is not None) == (r["name"] in MEMORY_BOUND)
        if r["roofline"]:
            assert r["roofline"]["fraction"] > 0 and r["roofline"]["min_bytes"] > 0
    assert res["bandwidth"]["bytes_per_s"] > 0
    assert not (out / "time_vs_batch.png").exists()
    for name in names:  # the table has a line for every mechanism
        assert any(line.startswith(name + " ") for line in printed.splitlines()), name


def test_forward_backward_torch_columns_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([*TINY, "--only", "se", "--batch-sizes", "1,2", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    rows = _load(out)["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    for row in rows:
        for side in ("jax", "torch"):
            for mode in ("fwd", "fwdbwd"):
                assert STAT_KEYS <= set(row[side][mode]), (side, mode)
        assert set(row["ratio"]) == {"fwd", "fwdbwd"}
        assert row["jax"]["compile_s"]["fwdbwd"] > 0
        # The input gradients of the timed backward steps agree between the two sides.
        assert row["torch_max_rel_diff"]["grad_input"] < 1e-4
        assert "memory_probe" not in row
    assert _is_png(out / "time_vs_batch.png") and _is_png(out / "ratio.png")


def test_memory_probe_in_subprocesses(tmp_path, capsys):
    rc = main([*TINY, "--only", "se", "--batch-sizes", "2", "--modes", "fwdbwd", "--memory",
               "--no-plots", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    (row,) = _load(tmp_path)["rows"]
    for side in ("jax", "torch"):
        probe = row["memory_probe"][side]
        assert "error" not in probe, probe
        assert probe["mode"] == "fwdbwd"
        assert probe["peak_rss_bytes"] >= probe["rss_before_step_bytes"] > 10 * 2**20


def test_cpu_convolutions_reach_every_jax_compile(tmp_path, capsys, jit_options):
    """``--cpu-convolutions eigen``: the timed steps compile with
    ``cpu_compiler_options("eigen")``, the result still agrees with PyTorch, the memory probe
    (a subprocess, given the choice) still runs, and results.json says which runtime ran."""
    rc = main([*TINY, "--only", "sk", "--batch-sizes", "2", "--modes", "fwd,fwdbwd", "--memory",
               "--cpu-convolutions", "eigen", "--no-plots", "--no-progress",
               "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    eigen = aj.cpu_compiler_options("eigen")
    assert eigen and jit_options.count(eigen) == 2  # the forward and the forward+backward step
    res = _load(tmp_path)
    assert res["config"]["cpu_convolutions"] == "eigen"
    assert res["config"]["compiler_options"] == eigen
    (row,) = res["rows"]
    assert row["status"] == "ok", row["note"]
    assert max(row["torch_max_rel_diff"].values()) < 1e-4
    assert "error" not in row["memory_probe"]["jax"], row["memory_probe"]


# A program that runs for tens of milliseconds on 2 cores: under asynchronous dispatch the call
# returns before its result is ready, under synchronous dispatch only once it is.
_DISPATCH_PROBE = """
import json, sys
import jax, jax.numpy as jnp
from attention_jax.bench import main
rc = main(sys.argv[1:])
f = jax.jit(lambda a: a @ a @ a @ a)
x = jnp.ones((1024, 1024), jnp.float32) / 1024
jax.block_until_ready(f(x))
ready = [f(x).is_ready() for _ in range(3)]
print(json.dumps({"rc": rc, "ready": ready}))
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cpu_dispatch_reaches_the_cpu_client(tmp_path, mode):
    """``--cpu-dispatch``: set before JAX starts its CPU backend (hence a subprocess), recorded
    in results.json, and in force: under ``sync`` every call returns with its result computed,
    under ``async`` (JAX's default) a long call returns before it is."""
    argv = [*TINY, "--only", "se", "--batch-sizes", "2", "--modes", "fwd", "--torch", "off",
            "--no-plots", "--no-progress", "--cpu-dispatch", mode, "--out", str(tmp_path)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _DISPATCH_PROBE, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["rc"] == 0
    assert probe["ready"] == ([True] * 3 if mode == "sync" else [False] * 3), probe
    res = _load(tmp_path)
    assert res["config"]["cpu_dispatch"] == {"requested": mode, "effective": True}
    assert not any("--cpu-dispatch" in n for n in res["notes"])


def test_set_cpu_dispatch_after_the_backend_started():
    """In this process JAX's CPU backend has started: the mode it started with is kept (and
    said), the other cannot be set any more, a mode that does not exist is refused."""
    import jax

    jax.devices()
    current = "async" if jax.config.values["jax_cpu_enable_async_dispatch"] else "sync"
    other = "sync" if current == "async" else "async"
    assert set_cpu_dispatch(current) == {"requested": current, "effective": True}
    assert set_cpu_dispatch(other) == {"requested": other, "effective": False}
    assert jax.config.values["jax_cpu_enable_async_dispatch"] == (current == "async")
    with pytest.raises(ValueError, match=r"set_cpu_dispatch: mode must be one of "
                                         r"\('async', 'sync'\), got 'fast'"):
        set_cpu_dispatch("fast")


def test_sharded_run_equals_single_device(tmp_path):
    """4 fake CPU devices (the flag must be set before jax starts, hence a subprocess).

    Sharding is the harness's (the batch split over a mesh), not the mechanisms', so a few
    names cover it: SE, a mechanism with batch statistics (CBAM) and a self-attention one (NL)
    where registered, and the functional ops; forward and forward+backward (the all-reduced
    parameter gradients).
    """
    names = [n for n in ("se", "cbam", "nl") if n in aj.list_attention()] + FUNCTIONS
    code = ("import sys; from attention_jax.bench import main; sys.exit(main(sys.argv[1:]))")
    argv = [*TINY, "--devices", "4", "--torch", "off", "--no-plots", "--no-progress",
            "--only", ",".join(names), "--batch-sizes", "2,4", "--out", str(tmp_path)]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = _load(tmp_path)
    assert res["devices"] == {"used": 4, "available": 4, "kind": "cpu", "platform": "cpu"}
    assert sorted(r["name"] for r in res["rows"]) == sorted(names * 2)
    for r in res["rows"]:
        assert r["torch"] is None and r["ratio"] == {}
        if r["batch"] == 2:  # 2 examples cannot be split over 4 devices: said, not hidden
            assert r["status"] == "skipped" and "not divisible by 4" in r["note"]
            continue
        assert r["status"] == "ok", (r["name"], r["note"])
        check = r["sharding_check"]
        assert check["ok"] and check["output_devices"] == 4, (r["name"], check)
        assert set(check["max_rel_diff"]) == {"fwd", "fwdbwd"}
        assert max(check["max_rel_diff"].values()) <= 1e-5, (r["name"], check)


def test_specs_follow_the_registry_and_the_override_table():
    specs, notes = build_specs()
    names = [s.name for s in specs]
    assert names[: len(aj.list_attention())] == aj.list_attention()
    for fn in FUNCTIONAL_SPECS:
        assert (fn in names) == hasattr(aj.functional, fn)
        assert (fn in names) != any(f"functional.{fn}" in n for n in notes)
    assert shapes_for("a-name-nobody-registered") == (RESNET_STAGES, QUICK_SHAPE)
    for name, row in SHAPE_OVERRIDES.items():
        assert shapes_for(name) == (row["full"], row["quick"][0])
    assert shapes_for("nl")[1][0] * shapes_for("nl")[1][1] < QUICK_SHAPE[0] * QUICK_SHAPE[1]
    (se,) = build_specs(["se"])[0]
    assert se.memory_bound and se.full_shapes == RESNET_STAGES
    with pytest.raises(ValueError, match=r"bench: --only must name known specs .*'nope'"):
        build_specs(["se", "nope"])


def test_list_prints_every_spec(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in aj.list_attention():
        assert any(line.split()[0] == name for line in lines), name


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "0,8"], "must be positive integers"),
    (["--batch-sizes", "a"], "must be positive integers"),
    (["--devices", "0"], "must be a positive integer or 'all'"),
    (["--dtype", "float16"], "must be float32 and/or bfloat16"),
    (["--modes", "bwd"], "must be fwd and/or fwdbwd"),
    (["--shape", "9x9"], "--shape must be HxWxC"),
    (["--quick", "--full"], "not allowed with argument"),
    (["--cpu-convolutions", "onednn"], "invalid choice: 'onednn'"),
])
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_too_many_devices_and_unknown_name_exit_2(capsys):
    assert main(["--devices", "64", "--no-progress"]) == 2
    assert "--devices must be at most 1" in capsys.readouterr().err
    assert main(["--only", "nope"]) == 2
    assert "--only must name known specs" in capsys.readouterr().err


def test_small_pieces():
    assert parse_shape("28x28x64") == (28, 28, 64)
    s = summarize([3.0, 1.0, 2.0], batch=4, number=5)
    assert (s["median_s"], s["min_s"], s["max_s"], s["images_per_s"], s["number"]) == (
        2.0, 1.0, 3.0, 2.0, 5)
    r = roofline(1000, 1e6, 2e-3)
    assert r["bound_s"] == pytest.approx(1e-3) and r["fraction"] == pytest.approx(0.5)
    assert rel_diff({"a": [1.0, 2.0]}, {"a": [1.0, 4.0]}) == pytest.approx(0.5)
    assert rel_diff([0.0], [0.0]) == 0.0


def test_table_shows_skipped_and_error_rows():
    base = {"kind": "module", "shape": [9, 9, 32], "shape_label": "9x9x32", "dtype": "float32",
            "devices": 1, "jax": {}, "torch": None, "ratio": {}, "roofline": None,
            "sharding_check": None}
    rows = [{**base, "name": "se", "batch": 1, "status": "skipped", "note": "time limit"},
            {**base, "name": "xx", "batch": 2, "status": "error", "note": "ValueError: boom"}]
    table = format_table({"rows": rows})
    assert "skipped: time limit" in table and "error: ValueError: boom" in table


def test_time_limit_skips_rows_and_says_so():
    from attention_jax.bench.runner import Config, run_sweep

    specs, _ = build_specs(["se"])
    cfg = Config(batch_sizes=(1, 2), shape=(9, 9, 32), time_limit_s=1e-9, bandwidth_mb=0)
    res = run_sweep(specs, cfg)
    assert [(r["batch"], r["status"], r["note"]) for r in res["rows"]] == [
        (1, "skipped", "time limit reached"), (2, "skipped", "time limit reached")]
    assert "2 rows skipped" in res["notes"][0]
    assert "skipped: time limit reached" in format_table(res)


def test_rel_diff_bulk_ignores_a_few_elements_not_many():
    import numpy as np

    from attention_jax.bench.runner import rel_diff_bulk

    b = np.random.default_rng(0).normal(size=(4, 50, 50))
    few, many = b.copy(), b.copy()
    few.ravel()[:5] += 1.0  # 5 of 10,000 elements (0.05%): a ReLU-kink-sized patch
    many.ravel()[::50] += 1.0  # 2%
    assert rel_diff(few, b) > 0.1 and rel_diff_bulk(few, b) == 0.0
    assert rel_diff_bulk(many, b) > 0.1


@pytest.mark.parametrize("damage", ["none", "kink", "wrong"])
def test_float64_referee_flags_only_real_disagreement(damage):
    """The agreement check on a real case (``se``, torch side attached): a JAX gradient with a
    small patch off (what a ReLU input rounded across 0 does) is refereed as fine; one that is
    wrong in bulk is flagged, as is any wrong forward."""
    import numpy as np

    from attention_jax.bench.runner import _check_against_torch
    from attention_jax.bench.specs import make_case
    from attention_jax.bench.torch_side import load_torch_side

    torch_side, _ = load_torch_side("cpu", "cpu")
    (spec,), _ = build_specs(["se"])
    case = make_case(spec, (9, 9, 32), 2, "float32", seed=0, torch_side=torch_side)
    y, grads = torch_side.fwdbwd_step(case)
    to_jax = case.torch_to_jax_layout
    gx = np.array(to_jax(grads[0]))
    if damage == "kink":
        gx[0, 3, 3, :2] += np.abs(gx).max()  # 2 of 5,184 elements
    elif damage == "wrong":
        gx = gx * 1.01
    warm = {("torch", "fwd"): y, ("torch", "fwdbwd"): (y, grads),
            ("jax", "fwd"): to_jax(y), ("jax", "fwdbwd"): (to_jax(y), (None, gx))}
    row, notes = {}, []
    _check_against_torch(row, case, warm, notes, torch_side)
    if damage == "none":
        assert row["torch_max_rel_diff"]["grad_input"] < 1e-6 and not notes
        assert "float64_referee" not in row and "disagree" not in row
    elif damage == "kink":
        assert row["torch_max_rel_diff"]["grad_input"] > 0.5
        assert row["float64_referee"]["grad_input"]["jax"] < 1e-5
        assert "disagree" not in row and "ReLU kink" in notes[0]
    else:
        assert row["disagree"] == ["grad_input"] and "disagree" in notes[0]


class _FakeTimer:
    """A Timer stand-in that records the order of its calls (no real timing)."""

    def __init__(self, name: str, log: list, repeat_s: float):
        self.name, self.log, self.repeat_s = name, log, repeat_s
        self.settled = []

    def settle(self, seconds):
        self.settled.append(seconds)
        self.log.append(("settle", self.name))

    def repeat(self):
        self.log.append(("repeat", self.name))


def test_plan_repeats_gives_short_steps_more_and_everyone_the_minimum():
    from attention_jax.bench.timing import plan_repeats

    log = []
    timers = [_FakeTimer("short", log, 0.003), _FakeTimer("long", log, 0.2),
              _FakeTimer("tiny", log, 1e-6)]
    assert plan_repeats(timers, fixed=None, min_repeats=7, max_repeats=100,
                        budget_s=0.3) == [33, 7, 100]
    assert plan_repeats(timers, fixed=3, min_repeats=7, max_repeats=100, budget_s=9) == [3] * 3


def test_time_blocks_runs_abba_blocks_each_after_a_settle():
    from attention_jax.bench.timing import time_blocks

    log = []
    a, b = _FakeTimer("jax", log, 0.01), _FakeTimer("torch", log, 0.01)
    assert time_blocks([a, b], [3, 2], settle_s=0.01) is True
    assert log == [("settle", "jax"), *[("repeat", "jax")] * 2,
                   ("settle", "torch"), ("repeat", "torch"),
                   ("settle", "torch"), ("repeat", "torch"),
                   ("settle", "jax"), ("repeat", "jax")]
    assert a.settled == [0.01, 0.01]
    log.clear()  # past the deadline: round one only, and it says so
    assert time_blocks([a, b], [4, 4], settle_s=0.0, deadline=0.0) is False
    assert [e for e in log if e[0] == "repeat"] == [("repeat", "jax")] * 2 + [
        ("repeat", "torch")] * 2


def test_settle_keeps_the_step_busy_for_the_time_asked():
    import time

    from attention_jax.bench.timing import Timer

    calls = []
    t = Timer(lambda: calls.append(time.perf_counter()), min_repeat_s=0.0)
    t0 = time.perf_counter()
    t.settle(0.02)
    assert time.perf_counter() - t0 >= 0.02 and len(calls) > 10
    calls.clear()
    t.settle(0.0)  # at least one call even with no time asked
    assert len(calls) == 1


def test_budgeted_row_gets_at_least_the_minimum_repeats(tmp_path, capsys):
    rc = main(["--shape", "9x9x32", "--only", "se", "--batch-sizes", "2", "--min-repeats", "7",
               "--repeat-budget", "0.2", "--min-repeat-ms", "1", "--bandwidth-mb", "0",
               "--no-plots", "--no-progress", "--torch-threads", "1", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    res = _load(tmp_path)
    (row,) = res["rows"]
    counts = [row[side][mode]["repeats"] for side in ("jax", "torch") for mode in ("fwd", "fwdbwd")]
    assert min(counts) >= 7 and max(counts) <= 100, counts
    assert res["config"]["min_repeats"] == 7 and res["config"]["repeats"] is None
    cpu = res["environment"]["cpu"]
    assert cpu["model_name"] and cpu["isa_summary"] in ("AMX", "AVX-512", "AVX2", "baseline")
    assert set(cpu["isa"]) >= {"avx2", "avx512f", "amx_tile"}
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    assert cpu["isa"]["avx512f"] == ("avx512f" in flags) and cpu["isa"]["avx2"] == (
        "avx2" in flags)
    assert res["environment"]["torch"]["openmp"]["effective"] is True


def test_sweeps_report_each_rows_spread(tmp_path, capsys):
    rc = main([*TINY, "--only", "se", "--batch-sizes", "1", "--sweeps", "2", "--no-plots",
               "--no-progress", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = _load(tmp_path)
    sp = res["spread"]
    assert sp["sweeps"] == 2 and len(res["sweeps"]) == 1
    assert {(e["name"], e["mode"]) for e in sp["rows"]} == {("se", "fwd"), ("se", "fwdbwd")}
    for e in sp["rows"]:
        assert len(e["ratio"]) == len(e["jax_s"]) == len(e["torch_s"]) == 2
        lo, hi = min(e["ratio"]), max(e["ratio"])
        assert e["ratio_spread"] == pytest.approx((hi - lo) / ((hi + lo) / 2))
    assert sp["summary"]["rows"] == 2 and "Spread over 2 back-to-back sweeps" in printed
    assert res["pid"] == res["sweeps"][0]["pid"] == os.getpid()
    assert res["config"]["fresh_processes"] is False


def test_fresh_processes_run_each_later_sweep_in_its_own_process(tmp_path, capsys):
    """``--fresh-processes``: the second sweep runs in a new process with the same options
    (here ``--dtype``, ``--modes`` and ``--cpu-dispatch`` must reach it), and its rows join the
    spread as an in-process sweep's would."""
    rc = main([*TINY, "--only", "se", "--batch-sizes", "2", "--sweeps", "2", "--modes", "fwd",
               "--dtype", "bfloat16", "--cpu-dispatch", "async", "--fresh-processes",
               "--no-plots", "--no-progress", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = _load(tmp_path)
    assert res["config"]["fresh_processes"] is True and res["pid"] == os.getpid()
    (later,) = res["sweeps"]
    assert later["pid"] != os.getpid() and later["sweep_s"] > 0
    (row,) = later["rows"]
    assert (row["name"], row["batch"], row["dtype"], row["status"]) == (
        "se", 2, "bfloat16", "ok")
    assert set(row["ratio"]) == {"fwd"}
    (entry,) = res["spread"]["rows"]
    assert len(entry["ratio"]) == 2 and entry["ratio"][1] == row["ratio"]["fwd"]
    assert "each after the first in a new process" in printed


def test_fresh_processes_say_why_a_sweep_failed(tmp_path, monkeypatch, capsys):
    """A later sweep whose process writes no results stops the run (exit code 2) with the
    process's exit code and output, not with a missing-file error."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'the child broke' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    rc = main([*TINY, "--only", "se", "--batch-sizes", "2", "--sweeps", "2", "--modes", "fwd",
               "--fresh-processes", "--no-plots", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--fresh-processes: the sweep's process exited with 3" in err
    assert "the child broke" in err


def test_spread_of_known_ratios():
    from attention_jax.bench.cli import spread

    def row(batch, jax_s, torch_s):
        return {"name": "se", "shape_label": "9x9x32", "batch": batch, "dtype": "float32",
                "status": "ok", "jax": {"fwd": {"median_s": jax_s}},
                "torch": {"fwd": {"median_s": torch_s}}, "ratio": {"fwd": jax_s / torch_s}}

    sweeps = [[row(1, 1.0, 1.0), row(8, 2.0, 1.0)], [row(1, 1.2, 1.0), row(8, 2.0, 1.0)],
              [row(1, 0.9, 1.0), row(8, 2.0, 1.0)]]
    sp = spread(sweeps)
    b1, b8 = sp["rows"]
    assert b1["ratio"] == [1.0, 1.2, 0.9] and b1["ratio_spread"] == pytest.approx(0.3)
    assert b8["ratio_spread"] == 0.0 and b8["torch_s_spread"] == 0.0
    assert sp["summary"] == {"rows": 2, "median": pytest.approx(0.15), "p90": pytest.approx(0.3),
                             "max": pytest.approx(0.3)}


def _synthetic_results(names, batches=(1, 8, 32)):
    rows = []
    for i, name in enumerate(names):
        for b in batches:
            j, t = 1e-4 * b * (1 + i), 1e-4 * b * (1 + i) / (0.5 + 0.1 * i)
            rows.append({"name": name, "shape_label": "28x28x64", "batch": b,
                         "dtype": "float32", "status": "ok",
                         "jax": {"fwd": {"median_s": j}, "fwdbwd": {"median_s": 3 * j}},
                         "torch": {"fwd": {"median_s": t}, "fwdbwd": {"median_s": 3 * t}},
                         "ratio": {"fwd": j / t, "fwdbwd": j / t}})
    return {"rows": rows, "environment": {"device": {"kind": "cpu", "backend": "cpu"},
                                          "versions": {"jax": "0.x", "torch": "2.x"}}}


@pytest.mark.parametrize("n", [2, 21])
def test_plots_are_legible(tmp_path, n):
    """time_vs_batch: fonts of at least 9 pt, x ticks at the measured batch sizes in plain
    numbers, y tick labels without exponents, and a legend inside the figure that overlaps no
    panel; ratio: every row's ratio written in its cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attention_jax.bench import report

    names = [f"mech{i}" for i in range(n)]
    res = _synthetic_results(names)
    with plt.rc_context(report._PLOT_STYLE):
        fig = report._time_vs_batch(plt, res, res["rows"])
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.has_data()]
        assert len(panels) == n
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
        for ax in panels:
            assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", "32"]
            lo, hi = ax.get_ylim()
            shown = [t for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
            assert len(shown) >= 2 and all(
                re.fullmatch(r"\d+(\.\d+)?", t.get_text()) for t in shown), ax.get_title()
            for t in [ax.title, *ax.get_xticklabels(), *shown]:
                assert t.get_fontsize() >= 9
        plt.close(fig)
        fig = report._ratio_heatmap(plt, res, res["rows"])
        fig.canvas.draw()
        (ax, bar) = fig.axes
        for label in (bar.xaxis.label, bar.yaxis.label):  # the colour bar's label fits
            if label.get_text():
                box = label.get_window_extent(fig.canvas.get_renderer())
                assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0
        cells = {t.get_text() for t in ax.texts}
        assert {f"{r['ratio']['fwd']:.2f}" for r in res["rows"]} <= cells
        assert len(ax.texts) == n * 6
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{n}  28x28x64" for n in names]
        plt.close(fig)
    assert [p.name for p in report.write_plots(tmp_path, res)] == ["time_vs_batch.png",
                                                                   "ratio.png"]


def test_busy_machine_is_said():
    from attention_jax.bench.report import busy_note

    quiet = {"machine": {"cpu_count": 2, "load_average_start": [1.5, 1, 1],
                         "load_average_end": [1.9, 1, 1]}}
    busy = {"machine": {"cpu_count": 2, "load_average_start": [1.0, 1, 1],
                        "load_average_end": [7.5, 1, 1]}}
    assert busy_note(quiet) is None
    assert busy_note(busy).endswith("load average up to 7.5 on 2 CPUs): timings are unreliable")
    assert "--omp-passive" in busy_note({**busy, "torch": {"device": "cpu"}})
