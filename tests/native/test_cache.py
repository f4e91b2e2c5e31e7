"""The native-kernel cache: what is trusted, what is rebuilt, who builds, and that nothing is
built while tracing (attention_jax/_native/__init__.py).

Each case runs in a fresh subprocess with its own ``ATTENTION_JAX_CACHE`` and ``TMPDIR``, so
the shared cache is never touched. The compiler is a stand-in script (``CXX``) that logs its
call and copies the library this test session already built, so the cases take a second each;
one test compiles for real. Foreign owners are made with ``os.chown`` (the suite runs as root).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from attention_jax import _native

MODULE = Path(_native.__file__)
REPO = MODULE.parents[2]
OTHER_UID = 12345

FAKE_CXX = r"""#!/bin/sh
# Stand-in compiler: log the call (one line of arguments), then copy the real library to -o.
out=
for a in "$@"; do
  if [ "$prev" = "-o" ]; then out="$a"; fi
  prev="$a"
done
echo "$*" >> "$FAKE_CXX_LOG"
if [ -n "$FAKE_CXX_SLEEP" ]; then sleep "$FAKE_CXX_SLEEP"; fi
if [ -n "$FAKE_CXX_KILL" ]; then
  head -c 1000 "$FAKE_CXX_LIB" > "$out"   # half-written output, then the build is killed
  kill -9 $PPID
  sleep 5
fi
cp "$FAKE_CXX_LIB" "$out"
"""

# Loads attention_jax/_native alone (not the package: a second per case instead of several)
# and prints what happened as JSON.
PROBE = textwrap.dedent("""
    import importlib.util, json, sys, warnings
    spec = importlib.util.spec_from_file_location("aj_native", {module!r})
    m = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        spec.loader.exec_module(m)
    print(json.dumps({{"available": m.available(), "status": m.status(), "isa": m.isa(),
                      "path": str(m._state.get("path")),
                      "warnings": [str(x.message) for x in w]}}))
""")


@pytest.fixture(scope="module")
def real_lib() -> Path:
    path = _native.build()  # the session's library (already built at import: a check only)
    assert path.is_file(), _native.status()
    return path


@pytest.fixture
def env(tmp_path, real_lib) -> dict:
    cxx = tmp_path / "fake-c++"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    base = {k: v for k, v in os.environ.items()
            if k not in ("ATTENTION_JAX_NATIVE", "ATTENTION_JAX_NATIVE_ISA")}
    return {**base, "ATTENTION_JAX_CACHE": str(tmp_path / "cache"), "CXX": str(cxx),
            "TMPDIR": str(tmp_path / "tmp"), "FAKE_CXX_LOG": str(tmp_path / "cxx.log"),
            "FAKE_CXX_LIB": str(real_lib), "PYTHONPATH": str(REPO)}


def _start(env: dict, code: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code or PROBE.format(module=str(MODULE))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> tuple[dict, list[str]]:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err}"
    return json.loads(out.splitlines()[-1]), _build_lines(err)


def _probe(env: dict, code: str | None = None) -> tuple[dict, list[str]]:
    return _finish(_start(env, code))


def _build_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "compiling the native CPU kernels" in line]


def _compiles(env: dict) -> list[str]:
    log = Path(env["FAKE_CXX_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def _name(env: dict) -> str:
    """The library's file name this environment computes (variant and hash): the module's own
    plan, computed in this process with ``env``'s compiler and variant settings (what a probe
    started with ``env`` computes; a subprocess for it cost ~2-4 s of importing JAX per case)."""
    with pytest.MonkeyPatch.context() as mp:
        for k in ("CXX", "ATTENTION_JAX_NATIVE_ISA", "PATH"):
            if k in env:
                mp.setenv(k, env[k])
            else:
                mp.delenv(k, raising=False)
        return _native._Plan().name


def _install(cache: Path, name: str, data: bytes, sidecar_for: bytes | None = None) -> Path:
    """Put a library (and a sidecar matching ``sidecar_for``, default ``data``) in ``cache``."""
    cache.mkdir(mode=0o700, exist_ok=True)
    lib = cache / name
    lib.write_bytes(data)
    lib.chmod(0o755)
    ref = data if sidecar_for is None else sidecar_for
    (cache / (name + ".sha256")).write_text(f"{hashlib.sha256(ref).hexdigest()} {len(ref)}\n")
    return lib


def _valid(cache: Path, name: str) -> bool:
    lib, side = cache / name, cache / (name + ".sha256")
    if not (lib.is_file() and side.is_file()):
        return False
    digest, size = side.read_text().split()
    data = lib.read_bytes()
    return hashlib.sha256(data).hexdigest() == digest and len(data) == int(size)


# ---------------------------------------------------------------------------- first contact


def test_first_build_says_so_once_then_loads_silently(env):
    cache = Path(env["ATTENTION_JAX_CACHE"])
    res, lines = _probe(env)
    assert res["available"], res
    assert len(_compiles(env)) == 1
    assert len(lines) == 1 and str(cache) in lines[0] and env["CXX"] in lines[0], lines
    assert res["isa"] in lines[0]
    # private directory, checked library and sidecar
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    name = Path(res["path"]).name
    assert res["path"] == str(cache / name) and _valid(cache, name)
    assert not stat.S_IMODE((cache / name).stat().st_mode) & 0o022
    assert not res["warnings"], res["warnings"]
    # The next process loads it: no compiler, no line, no warning.
    res2, lines2 = _probe(env)
    assert res2["available"] and res2["path"] == res["path"]
    assert len(_compiles(env)) == 1 and lines2 == [] and not res2["warnings"]
    # Nothing left behind in the temporary directory or the cache.
    assert os.listdir(env["TMPDIR"]) == []
    assert sorted(os.listdir(cache)) == sorted([".build.lock", name, name + ".sha256"])


def test_concurrent_first_builds_compile_once(env):
    env = {**env, "FAKE_CXX_SLEEP": "2"}
    procs = [_start(env) for _ in range(3)]
    results = [_finish(p) for p in procs]
    assert all(r["available"] for r, _ in results), results
    assert len({r["path"] for r, _ in results}) == 1
    assert len(_compiles(env)) == 1, _compiles(env)
    assert sum(len(lines) for _, lines in results) == 1  # one line per build, not per process


def test_host_variant_and_forcing_a_lower_one(env):
    host = _native.host_isa()
    res, _ = _probe(env)
    assert res["isa"] == host and f"kernels-{host}-" in res["path"]
    march = {"avx512": "-march=x86-64-v4", "avx2": "-march=x86-64-v3"}
    if host in march:
        assert march[host] in _compiles(env)[0]
    res, _ = _probe({**env, "ATTENTION_JAX_NATIVE_ISA": "generic"})
    assert res["isa"] == "generic" and "kernels-generic-" in res["path"]
    assert "-march" not in _compiles(env)[-1]
    res, _ = _probe({**env, "ATTENTION_JAX_NATIVE_ISA": "sse9"})
    assert res["isa"] == host and any("sse9" in w for w in res["warnings"])


def test_real_compiler_build_end_to_end(tmp_path):
    """One real compile into an empty cache, through the package: the build line, then
    grid_sample and attention run on the kernels."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ATTENTION_JAX_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("ATTENTION_JAX_NATIVE", None)
    env.pop("ATTENTION_JAX_NATIVE_ISA", None)
    code = ("import jax.numpy as jnp, attention_jax as aj\n"
            "from attention_jax import _native, functional as F\n"
            "print(_native.status())\n"
            "y = F.grid_sample(jnp.ones((1, 3, 3, 1)), jnp.zeros((1, 2, 2, 2)), "
            "implementation='native')\n"
            "a = F.attention(jnp.ones((1, 4, 8)), jnp.ones((1, 4, 8)), jnp.ones((1, 4, 8)), "
            "implementation='native')\n"
            "print(float(y.sum()), float(a.sum()))\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    status, sums = p.stdout.splitlines()
    assert status.startswith("native CPU kernels (attention, grid_sample;"), status
    assert str(cache) in status
    assert [float(s) for s in sums.split()] == [4.0, 32.0]
    lines = _build_lines(p.stderr)
    assert len(lines) == 1 and str(cache) in lines[0], p.stderr


# ---------------------------------------------------------------------------- refused dirs


def _plant(tmp_path: Path, name: str, real_lib: Path, where: Path) -> Path:
    """A library under the victim's expected name, with a valid sidecar, whose constructor
    writes a marker file: loading it would run the planter's code."""
    src = tmp_path / "planted.c"
    marker = tmp_path / "PLANTED_CODE_RAN"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    so = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    _install(where, name, so.read_bytes())
    return marker


@pytest.mark.parametrize("kind", ["other-owner", "world-writable", "group-writable",
                                  "symlink"])
def test_untrusted_cache_dir_is_refused(env, tmp_path, real_lib, kind):
    cache = Path(env["ATTENTION_JAX_CACHE"])
    name = _name(env)
    if kind == "symlink":  # a link to a directory of ours that holds a planted library
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        marker = _plant(tmp_path, name, real_lib, target)
        cache.symlink_to(target)
    else:
        cache.mkdir(mode=0o700)
        marker = _plant(tmp_path, name, real_lib, cache)
        if kind == "other-owner":
            os.chown(cache, OTHER_UID, OTHER_UID)
        else:
            cache.chmod(0o777 if kind == "world-writable" else 0o770)
    before = sorted(os.listdir(cache))
    res, lines = _probe(env)
    assert not marker.exists(), "the planted library was loaded"
    assert res["available"], res
    assert len(res["warnings"]) == 1, res["warnings"]
    why = {"other-owner": f"owned by uid {OTHER_UID}", "world-writable": "writable by group "
           "or others", "group-writable": "writable by group or others",
           "symlink": "is a symlink"}[kind]
    assert "not using the native-kernel cache" in res["warnings"][0]
    assert why in res["warnings"][0], res["warnings"]
    # Built elsewhere (a private temporary directory, removed after loading), nothing written
    # into the refused one.
    assert not res["path"].startswith(str(cache)) and str(tmp_path / "tmp") in res["path"]
    assert len(_compiles(env)) == 1 and len(lines) == 1
    assert sorted(os.listdir(cache)) == before
    assert os.listdir(env["TMPDIR"]) == []


def test_uncreatable_cache_dir_falls_back_with_one_warning(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**env, "ATTENTION_JAX_CACHE": str(blocker / "cache")}
    res, _ = _probe(env)
    assert res["available"] and len(res["warnings"]) == 1, res
    assert "cannot create" in res["warnings"][0]


# ---------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("case", ["truncated", "zero-length", "no-sidecar", "bad-sidecar",
                                  "foreign-owned", "group-writable", "read-only-valid",
                                  "read-only-truncated", "symlinked-library"])
def test_damaged_or_foreign_library_is_rebuilt(env, real_lib, tmp_path, case):
    cache = Path(env["ATTENTION_JAX_CACHE"])
    name = _name(env)
    data = real_lib.read_bytes()
    if case in ("truncated", "read-only-truncated"):
        # A truncated library with the full library's sidecar: dlopen of it used to SIGBUS.
        lib = _install(cache, name, data[: len(data) // 2], sidecar_for=data)
    elif case == "zero-length":
        lib = _install(cache, name, b"", sidecar_for=data)
    elif case == "symlinked-library":
        (tmp_path / "real.so").write_bytes(data)
        lib = _install(cache, name, data)
        lib.unlink()
        lib.symlink_to(tmp_path / "real.so")
    else:
        lib = _install(cache, name, data)
    if case == "no-sidecar":
        (cache / (name + ".sha256")).unlink()
    elif case == "bad-sidecar":
        (cache / (name + ".sha256")).write_text("garbage\n")
    elif case == "foreign-owned":
        os.chown(lib, OTHER_UID, OTHER_UID)
    elif case == "group-writable":
        lib.chmod(0o775)
    elif case.startswith("read-only"):
        lib.chmod(0o444)
    res, lines = _probe(env)
    assert res["available"], res
    assert res["path"] == str(cache / name)
    rebuilt = case != "read-only-valid"
    assert len(_compiles(env)) == int(rebuilt), case
    assert len(lines) == int(rebuilt)
    alarm = case in ("foreign-owned", "group-writable", "symlinked-library")
    assert len(res["warnings"]) == int(alarm), res["warnings"]
    if alarm:
        assert "ignoring the cached native library" in res["warnings"][0]
    # What is there now passes every check (a fresh, private, regular file).
    assert _valid(cache, name)
    st = os.lstat(cache / name)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
    assert not stat.S_IMODE(st.st_mode) & 0o022


def test_build_killed_halfway_leaves_nothing_the_next_build_keeps(env):
    cache = Path(env["ATTENTION_JAX_CACHE"])
    p = _start({**env, "FAKE_CXX_KILL": "1"})
    p.communicate(timeout=240)
    assert p.returncode == -9  # the stand-in compiler killed the importing process
    left = (cache / ".build.lock").read_text()
    assert left and Path(left).is_dir()  # its private build dir, named in the lock file
    name = _name(env)
    assert not (cache / name).exists()
    res, lines = _probe(env)
    assert res["available"] and len(lines) == 1 and not res["warnings"]
    assert not Path(left).exists()  # the killed build's directory is gone
    assert os.listdir(env["TMPDIR"]) == []
    assert sorted(os.listdir(cache)) == sorted([".build.lock", name, name + ".sha256"])


def test_stale_temporaries_are_removed(env):
    cache = Path(env["ATTENTION_JAX_CACHE"])
    cache.mkdir(mode=0o700)
    (cache / ".kernels-x.so.123.456.tmp").write_bytes(b"partial")
    old = cache / "tmpab12cd.so"  # what older versions left behind
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    res, _ = _probe(env)
    assert res["available"]
    assert not any(n.endswith(".tmp") or n.startswith("tmp") for n in os.listdir(cache))


def test_no_compiler_warns_once_at_first_use_and_uses_jax(env, tmp_path):
    env = {**env, "CXX": str(tmp_path / "no-such-compiler"), "PATH": str(tmp_path)}
    code = textwrap.dedent("""
        import json, warnings
        import jax, jax.numpy as jnp
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            from attention_jax import _native, functional as F
            at_import = len(w)
            for _ in range(2):
                y = jax.jit(lambda x, g: F.grid_sample(x, g))(jnp.ones((1, 3, 3, 1)),
                                                              jnp.zeros((1, 2, 2, 2)))
        print(json.dumps({"status": _native.status(), "at_import": at_import,
                          "warnings": [str(x.message) for x in w if "native" in
                                       str(x.message)], "sum": float(y.sum())}))
    """)
    res, lines = _probe(env, code)
    assert res["at_import"] == 0 and len(res["warnings"]) == 1, res
    assert "no C++ compiler" in res["status"] and "no C++ compiler" in res["warnings"][0]
    assert res["sum"] == 4.0 and lines == []


# ---------------------------------------------------------------------------- tracing


def test_tracing_spawns_no_process_and_writes_nothing(env):
    """Import builds (into an empty cache); tracing grid_sample and attention, forward and
    backward, on every path afterwards starts no process and writes no file."""
    code = textwrap.dedent("""
        import json, os, subprocess
        import jax, jax.numpy as jnp
        import attention_jax
        from attention_jax import _native, functional as F
        cache = os.environ["ATTENTION_JAX_CACHE"]
        before = sorted(os.listdir(cache))
        spawned = []
        def refuse(*a, **k):
            spawned.append(repr(a)[:200])
            raise RuntimeError("a process was started while tracing")
        subprocess.Popen._execute_child = refuse
        os.fork = os.posix_spawn = os.posix_spawnp = os.system = refuse
        x, g = jnp.ones((2, 5, 5, 3)), jnp.zeros((2, 4, 4, 2))
        q = jax.ShapeDtypeStruct((32, 1024, 16), jnp.float32)  # auto -> native kernel
        gs = lambda x, g: F.grid_sample(x, g).sum()
        at = lambda q: F.attention(q, q, q).sum()
        hlo = [jax.jit(gs).lower(x, g).as_text(), jax.jit(jax.grad(gs)).lower(x, g).as_text(),
               jax.jit(jax.grad(at)).lower(q).as_text()]
        jax.grad(gs, argnums=(0, 1))(x, g)
        print(json.dumps({"spawned": spawned, "written": sorted(os.listdir(cache)) != before,
                          "native": [(_native.target("fwd", "float32") in hlo[0]),
                                     (_native.target("bwd", "float32") in hlo[1]),
                                     (_native.attention_target("bwd") in hlo[2])]}))
    """)
    res, lines = _probe(env, code)
    assert len(_compiles(env)) == 1 and len(lines) == 1  # built once, at import
    assert res["spawned"] == [] and not res["written"], res
    assert res["native"] == [True, True, True]
