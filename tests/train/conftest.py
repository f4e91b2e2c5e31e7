import os

import jax
import pytest


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory):
    """A tfds data dir holding the embedded digits, config ``plain`` (built once)."""
    from attention_jax.data import get_builder

    path = str(tmp_path_factory.mktemp("tfds"))
    get_builder("digits/plain", data_dir=path)
    return path


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """One persistent compilation cache for every training test of a worker."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(jax_cache_dir):
    """Share compiled train steps between the runs of a test and across these test modules (a
    resumed run compiles the same program as the run it continues); restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], jax_cache_dir)
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)


@pytest.fixture
def subprocess_env(jax_cache_dir):
    """The environment of a training subprocess: CPU, this session's compilation cache."""
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": jax_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                 os.environ.get("PYTHONPATH", "")])}
