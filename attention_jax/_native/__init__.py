"""Native XLA:CPU kernels (C++ through the XLA FFI), built once per machine, loaded at import.

``grid_sample.cc`` holds bilinear ``grid_sample`` forward/backward, ``attention.cc``
FlashAttention forward/backward (float32, unmasked dot-product scores; only where the CPU has
AVX2/FMA). They are compiled together (with ``common.h``) into one library by the machine's C++
compiler (``$CXX``, else ``c++``/``g++``/``clang++``) against the XLA FFI headers that jaxlib
ships (``jax.ffi.include_dir()``). Nothing is downloaded.

**When.** The library is built (if not cached) and loaded when this module is first imported
(``import attention_jax`` imports it), or ahead of time with ``python -m attention_jax._native``
(``--rebuild`` to compile again). Never while a function is traced: ``grid_sample`` and
``attention`` only read the state recorded at import, so tracing inside ``jax.jit`` never
starts a compiler or writes a file. Why not lazily at the first call: the public functions
are nearly always first called under ``jit``, so a lazy build would run exactly while tracing;
and a function traced before the kernels were loaded would keep its pure-JAX lowering in
``jit``'s cache. A cached library costs a hash check and a ``dlopen`` (a few milliseconds, no
process). A build prints one line on stderr (what, where, with which compiler); with several
processes starting together (pytest workers), one builds under a file lock while the others
wait and then load its result.

**Where.** ``$ATTENTION_JAX_CACHE`` if set, else ``$XDG_CACHE_HOME/attention-jax``, else
``~/.cache/attention-jax``, created with mode 0700. The library is
``kernels-<isa>-<hash>.so``, the hash covering the sources, the flags, the compiler's path and
the jax version, with a ``.sha256`` sidecar (its hash and size) written after the library's
atomic rename.

**What is trusted (see ``tests/native/test_cache.py``).** The directory is used only if it is
not a symlink, is owned by this user and is not writable by group or others (checked on an
``O_NOFOLLOW`` descriptor). Otherwise one warning says why and the build goes to a fresh
private ``tempfile.mkdtemp`` directory (removed once the library is loaded). A cached library
is loaded only if it is a regular file owned by this user, not writable by group or others,
and its size and SHA-256 match the sidecar; the check reads the same open descriptor that is
then loaded (``/proc/self/fd``), so the file checked is the file loaded. Anything else (a
truncated or empty file, a missing or wrong sidecar, another owner) is rebuilt. Compilation
happens in a private temporary directory; a build killed halfway leaves nothing that a later
build does not clean up.

**Instruction set.** The library is compiled for the host's instruction set: ``avx512``
(``-march=x86-64-v4``: AVX-512 F/BW/VL/DQ, the 16-lane kernels), ``avx2``
(``-march=x86-64-v3``: AVX2/FMA, 8 lanes) or ``generic`` (no ``-march``: the portable loops;
FlashAttention is not built). The variant is chosen at load time from ``/proc/cpuinfo``;
``ATTENTION_JAX_NATIVE_ISA=avx2`` (or ``generic``) forces a lower one, e.g. to compare them.

**Turning them off.** ``ATTENTION_JAX_NATIVE=0`` never builds or loads them; every function
then runs its pure-JAX path. ``with attention_jax.native_disabled():`` makes
``implementation="auto"`` trace the pure-JAX path (and ``"native"`` raise): the way to
``jax.export`` for the CPU, whose serialisation rejects custom calls without a compatibility
guarantee, as these are. If the build fails (no compiler), the pure-JAX path is used and one
warning (at the first call that wanted a kernel) says why; ``status()`` reports it.

**Sharding.** The kernels are custom calls with a partitioning rule
(``jax.experimental.custom_partitioning``) over their flattened leading (batch) axis: under a
batch-sharded ``jit`` each device runs its own shard, with no gather of the inputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

try:
    import fcntl
except ImportError:  # not POSIX: no build lock (concurrent builds then just race to rename)
    fcntl = None

__all__ = [
    "available",
    "has",
    "usable",
    "status",
    "build",
    "host_isa",
    "isa",
    "native_disabled",
    "target",
    "attention_target",
    "cache_dir",
    "batched_call",
]

_DIR = Path(__file__).parent
_SOURCES = ("grid_sample.cc", "attention.cc")  # compiled into one library
_HEADERS = ("common.h",)
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-w", "-fno-trapping-math")
_ISA_FLAGS = {  # variant -> compiler flags, best first
    "avx512": ("-march=x86-64-v4", "-mprefer-vector-width=512"),
    "avx2": ("-march=x86-64-v3",),
    "generic": (),
}
_ISA_CPU_FLAGS = {  # variant -> /proc/cpuinfo flags it needs (x86-64-v4 / -v3)
    "avx512": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma",
               "bmi2", "movbe"},
    "avx2": {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c", "abm"},
    "generic": set(),
}
_LOCK_TIMEOUT_S = 900.0  # waiting for another process's build before building privately
_COMPILE_TIMEOUT_S = 900.0


# ---------------------------------------------------------------------------- targets

_DTYPES = {"float32": "F32", "float64": "F64"}  # dtype name -> suffix of the kernel symbols


def target(kind: str, dtype) -> str:
    """FFI target name of bilinear grid_sample, ``kind`` in {"fwd", "bwd"}, float32/float64."""
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


# ---------------------------------------------------------------------------- variant


def _cpu_flags() -> set[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in info.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_isa() -> str:
    """The best variant this CPU runs: ``"avx512"``, ``"avx2"`` or ``"generic"``."""
    flags = _cpu_flags()
    return next(v for v, need in _ISA_CPU_FLAGS.items() if need <= flags)


def _variant() -> tuple[str, str | None]:
    """(variant to build, a note if ``ATTENTION_JAX_NATIVE_ISA`` asked for one this CPU lacks)."""
    host = host_isa()
    want = os.environ.get("ATTENTION_JAX_NATIVE_ISA", "").strip().lower()
    if not want:
        return host, None
    order = list(_ISA_FLAGS)
    if want not in order:
        return host, f"ATTENTION_JAX_NATIVE_ISA={want!r} is not one of {order}"
    if order.index(want) < order.index(host):
        return host, f"ATTENTION_JAX_NATIVE_ISA={want!r}: this CPU runs at most {host!r}"
    return want, None


# ---------------------------------------------------------------------------- cache directory


def cache_dir() -> Path:
    """The configured cache directory (``$ATTENTION_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/attention-jax``, else ``~/.cache/attention-jax``), not yet checked."""
    if os.environ.get("ATTENTION_JAX_CACHE"):
        return Path(os.environ["ATTENTION_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attention-jax"


class _Refused(Exception):
    """The cache directory (or a file in it) is not one this process may trust. ``alarm``:
    someone else could have put it there (an owner or permissions that are not ours), as
    opposed to a file that is merely missing or damaged."""

    def __init__(self, why: str, alarm: bool = False) -> None:
        super().__init__(why)
        self.alarm = alarm


def _trusted(st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise _Refused(f"{what} is owned by uid {st.st_uid}, not by this user "
                       f"(uid {os.geteuid()})", alarm=True)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _Refused(f"{what} is writable by group or others (mode "
                       f"{stat.S_IMODE(st.st_mode):o})", alarm=True)


def _open_dir(path: Path) -> int:
    """Create ``path`` (mode 0700) if missing; return an ``O_NOFOLLOW`` descriptor of it if it
    is a directory of this user's that no one else can write, else raise ``_Refused``."""
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass  # another process created it first: checked below like any other
            st = os.lstat(path)
    except OSError as e:
        raise _Refused(f"cannot create {path} ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise _Refused(f"{path} is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{path} is not a directory")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _Refused(f"cannot open {path} ({e.strerror})") from None
    try:
        st2 = os.fstat(fd)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise _Refused(f"{path} changed while it was checked")
        try:
            _trusted(st2, str(path))
        except _Refused as e:
            if st2.st_uid == os.geteuid():  # ours, e.g. made by an older version, umask 002
                raise _Refused(f"{e}; `chmod go-w {path}` makes it usable", alarm=True) from None
            raise
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------- library files


def _sidecar(name: str) -> str:
    return name + ".sha256"


def _digest_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _open_checked(dfd: int, name: str) -> tuple[int | None, _Refused | None]:
    """Open ``name`` in the cache directory if it passes every check: (descriptor, None) or
    (None, why not)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None, _Refused("not built yet")
    except OSError as e:  # ELOOP: a symlink
        return None, _Refused(f"cannot open the cached library ({e.strerror})", alarm=True)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("the cached library is not a regular file")
        _trusted(st, "the cached library")
        try:
            side = os.open(_sidecar(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=dfd)
        except OSError:
            raise _Refused("the cached library has no checksum file") from None
        try:
            sst = os.fstat(side)
            _trusted(sst, "the checksum file")
            text = os.read(side, 256).decode("ascii", "replace").split()
        finally:
            os.close(side)
        if len(text) != 2 or not text[1].isdigit():
            raise _Refused("the checksum file is damaged")
        digest, size = text[0], int(text[1])
        if st.st_size != size:
            raise _Refused(f"the cached library has {st.st_size} bytes, its checksum file "
                           f"says {size}")
        if _digest_fd(fd) != digest:
            raise _Refused("the cached library's SHA-256 differs from its checksum file")
    except _Refused as e:
        os.close(fd)
        return None, e
    return fd, None


def _write_file(dfd: int, name: str, data: bytes, mode: int) -> None:
    """Write ``name`` in the directory atomically: a private temporary name, then a rename."""
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.fchmod(fd, mode)  # whatever the umask
    finally:
        os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


_LOCK_NAME = ".build.lock"


@contextlib.contextmanager
def _build_lock(dfd: int) -> Iterator[int | None]:
    """An exclusive ``flock`` on the directory's lock file (waits for another builder).

    The lock file also names the private build directory of its holder while it compiles, so
    that the next holder can remove it if that build was killed."""
    if fcntl is None:
        yield None
        return
    fd = os.open(_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dfd)
    try:
        _trusted(os.fstat(fd), "the build lock file")
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _clean_stale(dfd: int, lock_fd: int | None) -> None:
    """Remove what killed builds left (called holding the lock, so none of it is in use):
    temporaries in the cache directory and the build directory the lock file names."""
    for name in os.listdir(dfd):
        legacy = name.startswith("tmp") and name.endswith(".so")  # older versions' mkstemp
        if (name.startswith(".") and name.endswith(".tmp")) or legacy:
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not legacy or time.time() - st.st_mtime > 600:  # older versions don't lock
                    os.unlink(name, dir_fd=dfd)
    if lock_fd is None:
        return
    os.lseek(lock_fd, 0, os.SEEK_SET)
    left = os.read(lock_fd, 4096).decode("utf-8", "replace").strip()
    if left:
        _remove_build_dir(Path(left))
        os.ftruncate(lock_fd, 0)


def _remove_build_dir(path: Path) -> None:
    """Remove one of our private build directories (and nothing else)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (path.name.startswith("attention-jax-build-") and stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- building


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(cand) if cand else None
        if path:
            return path
    return None


class _Plan:
    """What to build for this machine: compiler, flags, the library's file name."""

    def __init__(self) -> None:
        self.isa, self.isa_note = _variant()
        cxx = _compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
        self.cxx = cxx
        self.flags = _FLAGS + _ISA_FLAGS[self.isa]
        key = hashlib.sha256()
        for name in _SOURCES + _HEADERS:
            key.update(name.encode())
            key.update((_DIR / name).read_bytes())
        key.update(repr((self.flags, jax.__version__, cxx)).encode())
        self.name = f"kernels-{self.isa}-{key.hexdigest()[:16]}.so"

    def compile(self, out: Path) -> None:
        cmd = [self.cxx, *self.flags, f"-I{jax.ffi.include_dir()}", f"-I{_DIR}",
               *(str(_DIR / n) for n in _SOURCES), "-o", str(out)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(cmd)} took more than {_COMPILE_TIMEOUT_S:.0f} "
                               "s") from None
        if p.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}):\n"
                               f"{p.stderr.strip()[-2000:]}")


def _build_into(plan: _Plan, dfd: int, where: Path, why: _Refused) -> int:
    """Build the library into the (checked) directory ``dfd`` unless another process did it
    while we waited for the lock; return a descriptor of the checked library."""
    with _build_lock(dfd) as lock_fd:
        fd, why_now = _open_checked(dfd, plan.name)
        if fd is not None:  # built by another process while we waited
            return fd
        _clean_stale(dfd, lock_fd)
        print(f"attention_jax: compiling the native CPU kernels ({', '.join(_KERNELS)}; "
              f"{plan.isa}) with {plan.cxx} into {where / plan.name} ({why_now or why}); "
              "once per version and machine, ~10-60 s", file=sys.stderr, flush=True)
        build_dir = Path(tempfile.mkdtemp(prefix="attention-jax-build-"))
        try:
            if lock_fd is not None:
                os.lseek(lock_fd, 0, os.SEEK_SET)
                os.write(lock_fd, str(build_dir).encode())
                os.fsync(lock_fd)
            out = build_dir / "kernels.so"
            plan.compile(out)
            data = out.read_bytes()
            _write_file(dfd, plan.name, data, 0o755)
            # The sidecar comes after the rename: a reader never sees a matching checksum for
            # a library that is not complete.
            _write_file(dfd, _sidecar(plan.name),
                        f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode(), 0o644)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
            if lock_fd is not None:
                os.ftruncate(lock_fd, 0)
        fd, why_now = _open_checked(dfd, plan.name)
    if fd is None:
        raise RuntimeError(f"the library just built in {where} fails its check: {why_now}")
    return fd


_KERNELS = ("grid_sample", "attention")
_lock = threading.RLock()
_state: dict[str, object] = {}
_warned: set[str] = set()


def _private_dir(why: str) -> tuple[Path, int]:
    warnings.warn(f"attention_jax: not using the native-kernel cache ({why}); building in a "
                  "private temporary directory instead (set ATTENTION_JAX_CACHE to a "
                  "directory of yours, mode 0700, to keep the build)", RuntimeWarning,
                  stacklevel=5)
    where = Path(tempfile.mkdtemp(prefix="attention-jax-"))
    return where, _open_dir(where)


@contextlib.contextmanager
def _library_fd(plan: _Plan, *, force: bool = False) -> Iterator[tuple[int, Path]]:
    """A checked descriptor of the library (built if needed) and the path it was found at.

    The configured cache directory if it can be trusted; else (one warning) a fresh private
    temporary directory, removed on exit (the loaded library stays mapped)."""
    where, private = cache_dir(), False
    try:
        dfd = _open_dir(where)
    except _Refused as e:
        (where, dfd), private = _private_dir(str(e)), True
    try:
        fd, why = (None, _Refused("rebuild requested")) if force else _open_checked(
            dfd, plan.name)
        if fd is None:
            if why.alarm:
                warnings.warn(f"attention_jax: ignoring the cached native library in {where} "
                              f"({why}); rebuilding it", RuntimeWarning, stacklevel=4)
            if force:
                with contextlib.suppress(OSError):
                    os.unlink(plan.name, dir_fd=dfd)
            try:
                fd = _build_into(plan, dfd, where, why)
            except OSError as e:  # e.g. a read-only cache directory: build privately instead
                if private:
                    raise
                os.close(dfd)
                (where, dfd), private = _private_dir(f"cannot write {where}: {e}"), True
                fd = _build_into(plan, dfd, where, why)
        try:
            yield fd, where / plan.name
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
        if private:
            shutil.rmtree(where, ignore_errors=True)


def _dlopen(fd: int, path: Path) -> ctypes.CDLL:
    """Load the library through the descriptor that was checked (not its path, which someone
    could replace in between), where the OS allows it."""
    proc = f"/proc/self/fd/{fd}"
    return ctypes.CDLL(proc if os.path.exists(proc) else str(path))


def build(force: bool = False) -> Path:
    """Compile the kernels into the cache (unless a checked copy is there) and return its path.

    Does not load them (a process loads them once, at import). ``force`` compiles again.
    Raises RuntimeError with the compiler's message if there is no compiler or it fails.
    """
    plan = _Plan()
    with _lock, _library_fd(plan, force=force) as (_, path):
        return path


def _load() -> None:
    """Build if needed and load the kernels; record the outcome in ``_state``."""
    if os.environ.get("ATTENTION_JAX_NATIVE", "1") == "0":
        _state["error"] = "disabled by ATTENTION_JAX_NATIVE=0"
        _state["quiet"] = True
        return
    try:
        plan = _Plan()
        if plan.isa_note:
            warnings.warn(f"attention_jax: {plan.isa_note}; using {plan.isa!r}",
                          RuntimeWarning, stacklevel=3)
        with _library_fd(plan) as (fd, path):
            lib = _dlopen(fd, path)
        kernels = set()
        for name, (symbol, kernel) in _TARGETS.items():
            if kernel in _OPTIONAL and not hasattr(lib, symbol):
                continue  # not built for this CPU
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
            kernels.add(kernel)
    except Exception as e:  # no compiler, failed build, unloadable library: pure-JAX path
        _state["error"] = f"{type(e).__name__}: {e}"
        return
    _state.update(lib=lib, path=path, kernels=kernels, isa=plan.isa)


def _ensure_loaded() -> None:
    with _lock:
        if not _state:
            _load()


# ---------------------------------------------------------------------------- queries

_disabled = jax.make_user_context(default_value=False)


@contextlib.contextmanager
def native_disabled() -> Iterator[None]:
    """Inside this context, ``implementation="auto"`` traces the pure-JAX paths and
    ``implementation="native"`` raises ValueError.

    It is part of ``jax.jit``'s cache key, so a function jitted outside is traced again
    inside. Use it to ``jax.export`` for the CPU (``jax.export`` refuses the native kernels'
    custom calls, which have no compatibility guarantee)::

        with attention_jax.native_disabled():
            exported = jax.export.export(jax.jit(f), platforms=["cpu"])(x)
    """
    with _disabled(True):
        yield


def available() -> bool:
    """Whether the native CPU kernels are built, loaded and registered in this process."""
    return "lib" in _state


def has(kernel: str) -> bool:
    """Whether the native ``kernel`` ("grid_sample" or "attention") is loaded."""
    return available() and kernel in _state["kernels"]


def isa() -> str | None:
    """The variant loaded (``"avx512"``, ``"avx2"``, ``"generic"``), or None."""
    return _state.get("isa")


def usable(kernel: str, *, warn: bool = False) -> bool:
    """Whether a function being traced now may use ``kernel``: loaded, and not inside
    ``native_disabled()``. Reads state only (never builds). ``warn``: the first time a kernel
    is wanted but failed to build, one RuntimeWarning says why."""
    if _disabled.value:
        return False
    if has(kernel):
        return True
    if warn and "error" in _state and not _state.get("quiet") and not _warned:
        _warned.add(kernel)
        warnings.warn(f"attention_jax: native CPU kernels unavailable, using the pure-JAX "
                      f"path ({str(_state['error']).splitlines()[0]})", RuntimeWarning,
                      stacklevel=4)
    return False


def status() -> str:
    """One line: the variant and where the kernels were loaded from, or why they are not
    used."""
    if _disabled.value:
        return "native CPU kernels not used: inside attention_jax.native_disabled()"
    if available():
        return (f"native CPU kernels ({', '.join(sorted(_state['kernels']))}; {_state['isa']})"
                f" loaded from {_state['path']}")
    return f"native CPU kernels not used: {_state['error']}"


# ---------------------------------------------------------------------------- calls


def _batch_spec(shapes: Sequence) -> object:
    """The mesh axes of the first operand whose leading (batch) axis is sharded, or None."""
    for s in shapes:
        sh = getattr(s, "sharding", None)
        if isinstance(sh, NamedSharding) and len(sh.spec) and sh.spec[0] is not None:
            return sh.spec[0]
    return None


def _mesh_of(mesh, shapes: Sequence):
    if getattr(mesh, "empty", True):
        for s in shapes:
            if isinstance(getattr(s, "sharding", None), NamedSharding):
                return s.sharding.mesh
    return mesh


@functools.cache
def _batched_op(name: str, results: Callable, in_core: tuple[int, ...],
                out_core: tuple[int, ...], attrs: tuple[tuple[str, object], ...]) -> Callable:
    """The custom call ``name`` on operands with one leading batch axis, partitioned over it."""

    def call(*operands):
        return tuple(jax.ffi.ffi_call(name, results(*operands))(*operands, **dict(attrs)))

    def sharded_like(mesh, spec, shapes):
        return tuple(NamedSharding(mesh, PartitionSpec(spec, *(None,) * (len(s.shape) - 1)))
                     for s in shapes)

    def infer(mesh, arg_shapes, result_shape):
        mesh = _mesh_of(mesh, arg_shapes)
        return sharded_like(mesh, _batch_spec(arg_shapes), result_shape)

    def partition(mesh, arg_shapes, result_shape):
        # Each device runs the kernel on its slice of the batch; every other axis whole.
        mesh = _mesh_of(mesh, arg_shapes)
        spec = _batch_spec(arg_shapes)
        return (mesh, call, sharded_like(mesh, spec, result_shape),
                sharded_like(mesh, spec, arg_shapes))

    dims = lambda tag, i, n: " ".join(["b", *(f"{tag}{i}_{d}" for d in range(n))])
    rule = (", ".join(dims("i", i, n) for i, n in enumerate(in_core)) + " -> "
            + ", ".join(dims("o", i, n) for i, n in enumerate(out_core)))
    partitioned = custom_partitioning(call)
    partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                              sharding_rule=rule)

    @jax.custom_batching.custom_vmap
    def op(*operands):
        lead = operands[0].shape[:operands[0].ndim - in_core[0]]
        flat = [a.reshape((math.prod(lead), *a.shape[a.ndim - n:]))
                for a, n in zip(operands, in_core, strict=True)]
        outs = partitioned(*flat)
        return tuple(o.reshape(lead + o.shape[1:]) for o in outs)

    @op.def_vmap
    def _vmap(axis_size, in_batched, *operands):
        # One more leading batch axis (in front, where custom_vmap puts it) for every operand.
        operands = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                    for a, b in zip(operands, in_batched, strict=True)]
        return op(*operands), (True,) * len(out_core)

    return op


def batched_call(name: str, results: Callable, operands: Sequence[jax.Array], *,
                 in_core: Sequence[int], out_core: Sequence[int], **attrs) -> tuple:
    """Call the FFI target ``name`` on operands sharing their leading (batch) dims.

    Args:
      name: the registered target.
      results: ``(*operands with one flattened batch axis) -> ShapeDtypeStructs`` of the
        outputs; a module-level function (it is part of a cache key).
      operands: arrays whose leading dims (all but the last ``in_core[i]``) are equal.
      in_core, out_core: the number of non-batch (trailing) dims of each operand / output.
      attrs: the kernel's attributes (hashable numpy scalars).

    Returns:
      The outputs, with the operands' leading dims. The leading dims are flattened to one
      axis for the kernel; ``jax.vmap`` adds axes in front; under a sharded ``jit`` each
      device computes its slice of that axis (``custom_partitioning``).
    """
    op = _batched_op(name, results, tuple(in_core), tuple(out_core),
                     tuple(sorted(attrs.items())))
    return op(*operands)


_ensure_loaded()
