"""Installed like a library (issue #17): the wheel's contents, ``attention-jax bench`` from an
installed wheel, a slim core import, and extras that say how to install them.

The wheel is built from a copy of the package sources. The install test puts it into a fresh
virtual environment whose only own package is that wheel; its dependencies are the ones already
installed in the running environment, made visible through a ``.pth`` file (a plain path line,
so the running environment's editable install of this checkout is not activated) instead of
being copied again (about 1.7 GB and 35 s for jax, torch and matplotlib from a local index; CI
has 2 cores). What is tested is the wheel itself: pip installs it with ``--no-index``, so every
requirement of the core and of the ``bench`` extra must already be satisfied by name and
version (pip prints "Requirement already satisfied" for each, and fails on a missing one);
``attention_jax`` is imported from the new environment's site-packages (checked); the command
is the wheel's own entry point; and it runs from an empty directory, so neither the checkout's
``tests/`` nor ``benchmarks/`` can be reached.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from attention_jax import _extras

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "attention_jax"
CORE = {"jax", "jaxlib", "flax", "optax", "numpy"}
# Modules the core must not import: data, checkpoints, plotting, PyTorch, weights files.
HEAVY = ("tensorflow_datasets", "tensorflow", "array_record", "orbax", "tensorstore",
         "matplotlib", "torch", "sklearn", "tqdm", "safetensors", "timm", "pandas")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JAX_PLATFORMS="cpu", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (a build in place would write build/ and
    *.egg-info into the checkout while other tests run)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(PKG, src / "attention_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = dist.glob("attention_jax-*.whl")
    return whl


def _metadata(whl: Path) -> tuple[list[str], dict[str, str]]:
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        return names, {"METADATA": z.read(meta).decode(), "entry_points": z.read(entry).decode()}


def test_wheel_has_one_top_level_package_and_the_kernel_sources(wheel):
    names, files = _metadata(wheel)
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"attention_jax"}, top
    # Every module of the package ships, the references and the harness included.
    sources = {p.relative_to(REPO).as_posix() for p in PKG.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= set(names), sorted(sources - set(names))
    assert {"attention_jax/torch_reference/registry.py", "attention_jax/bench/cli.py"} <= sources
    # The native kernels are compiled on first use from sources that must be in the wheel.
    kernels = {p.relative_to(REPO).as_posix() for p in (PKG / "_native").iterdir()
               if p.suffix in (".cc", ".h")}
    assert kernels and kernels <= set(names), sorted(kernels - set(names))
    assert re.search(r"^attention-jax = attention_jax\.cli:main$", files["entry_points"], re.M)


def _requirements(metadata: str) -> tuple[set[str], dict[str, set[str]]]:
    msg = email.parser.Parser().parsestr(metadata)
    core, extras = set(), {e: set() for e in msg.get_all("Provides-Extra") or []}
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        m = re.search(r"""extra == ["']([\w-]+)["']""", marker)
        (extras[m.group(1)] if m else core).add(spec.strip())
    return core, extras


def _names(reqs: set[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_core_requirements_are_slim_and_extras_cover_the_rest(wheel):
    _, files = _metadata(wheel)
    core, extras = _requirements(files["METADATA"])
    assert _names(core) == CORE, core
    assert set(extras) == {"train", "bench", "weights", "test"}
    assert "torch==2.13.0" in extras["bench"] and "matplotlib" in _names(extras["bench"])
    assert {"tensorflow-datasets", "array-record", "orbax-checkpoint",
            "scikit-learn"} <= _names(extras["train"])
    assert _names(extras["weights"]) == {"safetensors"}
    assert "attention-jax[bench,train,weights]" in extras["test"]
    # _extras (the message users read) names the same extras as the wheel.
    assert set(_extras.EXTRAS) == {"train", "bench", "weights"}


def test_bench_from_the_installed_wheel_in_an_empty_directory(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([py, "-m", "pip", "install", "--no-index", f"{wheel}[bench]"],
                             capture_output=True, text=True, timeout=300, env=_env())
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "Successfully installed attention-jax-0.1.0" in install.stdout, install.stdout[-2000:]
    for dep in ("torch", "matplotlib", "flax"):  # resolved from the shared environment
        assert re.search(rf"Requirement already satisfied: {dep}\b", install.stdout, re.I), dep

    empty = tmp_path / "empty"
    empty.mkdir()
    probe = subprocess.run(
        [py, "-c", "import importlib.util, attention_jax; print(attention_jax.__file__); "
                   "print(importlib.util.find_spec('benchmarks'), "
                   "importlib.util.find_spec('tests'))"],
        cwd=empty, capture_output=True, text=True, timeout=120, env=_env())
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, stray = probe.stdout.splitlines()
    assert Path(where).is_relative_to(site), where
    assert stray == "None None", stray

    run = subprocess.run([env_dir / "bin" / "attention-jax", "bench", "--quick", "--only",
                          "se,cbam"], cwd=empty, capture_output=True, text=True, timeout=600,
                         env=_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "not installed" not in run.stdout and "not found" not in run.stdout, run.stdout
    res = json.loads((empty / "bench_results" / "results.json").read_text())
    assert res["environment"]["versions"]["attention-jax"] == "0.1.0"
    assert res["environment"]["git_commit"] is None  # installed, not a checkout
    rows = [r for r in res["rows"] if r["status"] == "ok"]
    assert {r["name"] for r in rows} == {"se", "cbam"}, res["rows"]
    for r in rows:  # the PyTorch columns: timed, and computing the same function
        assert r["torch"]["fwd"]["median_s"] > 0 and r["torch"]["fwdbwd"]["median_s"] > 0, r
        assert set(r["ratio"]) == {"fwd", "fwdbwd"}, r
        assert max(r["torch_max_rel_diff"].values()) < 1e-4, r
    table = [ln.split() for ln in run.stdout.splitlines() if ln.startswith(("se ", "cbam "))]
    assert len(table) == len(rows), run.stdout
    for cells in table:  # torch ms and jax/pt, forward then forward+backward, all numbers
        assert all(re.fullmatch(r"\d+(\.\d+)?", cells[i]) for i in (8, 9, 12, 13)), cells
    assert sorted(p.name for p in (empty / "bench_results").iterdir()) == [
        "ratio.png", "results.json", "time_vs_batch.png"]
    assert sorted(p.name for p in empty.iterdir()) == ["bench_results"]


def _python(code: str, *, block: tuple[str, ...] = (), timeout: int = 300):
    """Run ``code`` in a fresh interpreter in which the ``block``ed packages cannot be imported
    (as if their extra were not installed)."""
    prelude = f"import sys\nfor _m in {list(block)!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**_env(), "PYTHONPATH": str(REPO)})


def test_importing_the_core_imports_no_extra():
    proc = _python(f"""
        import attention_jax, attention_jax.linen, attention_jax.nnx, attention_jax.functional
        import attention_jax.models
        heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))
        print(heavy)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_core_runs_with_every_extra_missing():
    """linen and nnx modules built by name and run, with data, checkpoint, plotting, weights and
    PyTorch packages all unimportable."""
    proc = _python("""
        import jax, jax.numpy as jnp
        from flax import nnx
        import attention_jax as aj
        x = jnp.ones((2, 8, 8, 16))
        m = aj.create_attention("cbam", 16)
        v = m.init(jax.random.key(0), x)
        y = m.apply(v, x)
        n = aj.create_attention("se", 16, api="nnx", rngs=nnx.Rngs(0))
        print(y.shape, n(x).shape)
    """, block=HEAVY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "(2, 8, 8, 16) (2, 8, 8, 16)", proc.stdout


BENCH_TINY = ["--only", "se", "--shape", "9x9x16", "--batch-sizes", "1", "--repeats", "1",
              "--warmup", "0", "--min-repeat-ms", "0", "--bandwidth-mb", "0"]


def _bench(argv: list[str], block: tuple[str, ...], tmp_path: Path):
    return _python(f"""
        from attention_jax.bench import main
        sys.exit(main({[*argv, "--out", str(tmp_path)]!r}))
    """, block=block)


def test_bench_without_torch_times_jax_and_names_the_extra(tmp_path):
    proc = _bench([*BENCH_TINY, "--no-plots", "--no-progress"], ("torch",), tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'torch is not installed: JAX columns only (pip install "attention-jax[bench]")' in (
        proc.stdout)
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["status"] == "ok" and row["torch"] is None and row["jax"]["fwd"]["median_s"] > 0


@pytest.mark.parametrize("argv, block, says", [
    (["--torch", "cpu", "--no-plots", "--no-progress"], ("torch",), "needs torch, not"),
    (["--no-progress"], ("matplotlib",), "needs matplotlib, not installed"),
    (["--no-plots"], ("tqdm",), "(or pass --no-progress to time JAX alone)"),
    # The core alone: everything the default command needs is named at once.
    ([], ("torch", "matplotlib", "tqdm"), "needs matplotlib, tqdm (and torch for the PyTorch "
                                          "columns), not installed: pip install "
                                          '"attention-jax[bench]" (or pass --no-plots '
                                          "--no-progress --torch off to time JAX alone)"),
])
def test_bench_stops_at_once_when_an_option_needs_a_missing_package(argv, block, says,
                                                                   tmp_path):
    proc = _bench([*BENCH_TINY, *argv], block, tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'pip install "attention-jax[bench]"' in proc.stderr and says in proc.stderr, (
        proc.stderr)
    assert not (tmp_path / "results.json").exists()  # nothing was timed first


def test_require_names_the_extra_and_keeps_other_errors():
    assert _extras.require("json", "train", "x").__name__ == "json"
    with pytest.raises(ImportError, match=r'^demo needs no_such_pkg_zz, which is not installed: '
                                          r'pip install "attention-jax\[weights\]"$'):
        _extras.require("no_such_pkg_zz.sub", "weights", "demo")
    with pytest.raises(ImportError, match=r'pip install "attention-jax\[bench\]"'):
        _extras.require_spec("no_such_pkg_zz", "bench", "demo")
    _extras.require_spec("json", "bench", "demo")
    with pytest.raises(ValueError, match=r"install_hint: extra must be one of .*got 'nope'"):
        _extras.require("json", "nope", "demo")


def test_require_does_not_mask_a_broken_install(tmp_path, monkeypatch):
    """A package that is installed but fails inside its own imports is not 'missing': the
    original error comes through."""
    (tmp_path / "broken_pkg_zz").mkdir()
    (tmp_path / "broken_pkg_zz" / "__init__.py").write_text("import no_such_inner_zz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_inner_zz"):
        _extras.require("broken_pkg_zz", "train", "demo")
