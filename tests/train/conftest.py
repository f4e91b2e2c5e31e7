import jax
import pytest


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory):
    """A tfds data dir holding the embedded digits, config ``plain`` (built once)."""
    from attention_jax.data import get_builder

    path = str(tmp_path_factory.mktemp("tfds"))
    get_builder("digits/plain", data_dir=path)
    return path


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Share compiled train steps between the runs of a test (a resumed run compiles the same
    program as the run it continues); restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)
