"""Native XLA:CPU kernels (C++ through the XLA FFI), compiled on first use and cached.

``grid_sample.cc`` holds bilinear ``grid_sample`` forward/backward for the CPU, ``attention.cc``
FlashAttention forward/backward (float32, unmasked dot-product scores; only where the CPU has
AVX2/FMA). They are compiled together (with ``common.h``) into one library by the machine's C++
compiler (``$CXX``, else ``c++``/``g++``) against the XLA FFI headers
that jaxlib ships (``jax.ffi.include_dir()``), into a cache directory keyed by a hash of the
source, the flags and the jax version:

* ``$ATTENTION_JAX_CACHE`` if set, else ``$XDG_CACHE_HOME/attention-jax``, else
  ``~/.cache/attention-jax``; if that cannot be written, ``<tmp>/attention-jax-<uid>``.

Nothing is downloaded. Set ``ATTENTION_JAX_NATIVE=0`` to never build or use the kernels (every
function then runs its pure-JAX path). If the build fails (no compiler), the pure-JAX path is
used and one warning says why; ``status()`` reports it. ``python -m attention_jax._native``
builds ahead of time and prints the status.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

__all__ = ["available", "has", "status", "build", "target", "attention_target", "cache_dir"]

_DIR = Path(__file__).parent
_SOURCES = ("grid_sample.cc", "attention.cc")  # compiled into one library
_HEADERS = ("common.h",)
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-w", "-fno-trapping-math")


def _cpu_flags() -> tuple[str, ...]:
    """AVX2/FMA code (x86-64-v3) where this CPU has it: the geometry loops vectorise 8-wide."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ("-march=x86-64-v3",) if {"avx2", "fma", "bmi2", "movbe"} <= flags else ()


_DTYPES = {"float32": "F32", "float64": "F64"}  # dtype name -> suffix of the kernel symbols


def target(kind: str, dtype) -> str:
    """FFI target name for ``kind`` in {"fwd", "bwd"} and float32/float64 ``dtype``."""
    return f"attention_jax_grid_sample_bilinear_{kind}_{_DTYPES[jnp.dtype(dtype).name].lower()}"


def attention_target(kind: str) -> str:
    """FFI target name of the float32 FlashAttention kernel, ``kind`` in {"fwd", "bwd"}."""
    return f"attention_jax_flash_attention_{kind}_f32"


_TARGETS = {  # FFI target name -> (exported symbol, kernel)
    **{target(d.lower(), name): (f"AjGridSampleBilinear{t}{d}", "grid_sample")
       for name, t in _DTYPES.items() for d in ("Fwd", "Bwd")},
    **{attention_target(d.lower()): (f"AjFlashAttentionF32{d}", "attention")
       for d in ("Fwd", "Bwd")},
}
_OPTIONAL = {"attention"}  # kernels only built on some CPUs (AVX2/FMA); the others always are
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("ATTENTION_JAX_CACHE"):
        return Path(os.environ["ATTENTION_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attention-jax"


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(cand) if cand else None
        if path:
            return path
    return None


def _writable(directory: Path) -> Path:
    """``directory``, created; if it cannot be written (read-only home on some CI runners), a
    per-user temporary directory instead."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"attention-jax-{os.getuid()}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def build(force: bool = False) -> Path:
    """Compile the kernels (if not cached) and return the shared library's path.

    Raises RuntimeError with the compiler's message if there is no compiler or it fails.
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        key.update(name.encode())
        key.update((_DIR / name).read_bytes())
    flags = _FLAGS + _cpu_flags()
    key.update(repr((flags, jax.__version__, cxx)).encode())
    out = _writable(cache_dir()) / f"kernels-{key.hexdigest()[:16]}.so"
    if out.exists() and not force:
        return out
    # Compile to a private name, then rename: concurrent builders (pytest workers) never see a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *flags, f"-I{include}", f"-I{_DIR}", *(str(_DIR / n) for n in _SOURCES),
               "-o", tmp]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> None:
    if os.environ.get("ATTENTION_JAX_NATIVE", "1") == "0":
        _state["error"] = "disabled by ATTENTION_JAX_NATIVE=0"
        return
    try:
        path = build()
        lib = ctypes.CDLL(str(path))
        kernels = set()
        for name, (symbol, kernel) in _TARGETS.items():
            if kernel in _OPTIONAL and not hasattr(lib, symbol):
                continue  # not built for this CPU
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
            kernels.add(kernel)
    except Exception as e:  # no compiler, failed build, unloadable library: pure-JAX path
        _state["error"] = f"{type(e).__name__}: {e}"
        warnings.warn(f"attention_jax: native CPU kernels unavailable, using the pure-JAX "
                      f"path ({_state['error'].splitlines()[0]})", RuntimeWarning, stacklevel=3)
        return
    _state["lib"], _state["path"], _state["kernels"] = lib, path, kernels


def available() -> bool:
    """Whether the native CPU kernels are built, loaded and registered (builds on first call)."""
    with _lock:
        if not _state:
            _load()
    return "lib" in _state


def has(kernel: str) -> bool:
    """Whether the native ``kernel`` ("grid_sample" or "attention") is loaded (builds on first
    call)."""
    return available() and kernel in _state["kernels"]


def status() -> str:
    """One line: where the kernels were loaded from, or why they are not used."""
    if available():
        return (f"native CPU kernels ({', '.join(sorted(_state['kernels']))}) loaded from "
                f"{_state['path']}")
    return f"native CPU kernels not used: {_state['error']}"


