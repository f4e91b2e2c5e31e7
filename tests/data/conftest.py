import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A tfds data dir holding the embedded digits, configs ``plain`` and ``R`` (built once)."""
    from attention_jax.data import get_builder

    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("digits/plain", "digits/R"):
        get_builder(name, data_dir=path)
    return path
