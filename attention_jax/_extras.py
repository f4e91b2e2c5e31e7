"""Optional dependencies: which extra installs what, and one clear error when one is missing.

``pip install attention-jax`` installs the core (jax, flax, optax, numpy): the functions, the
linen and nnx modules, the registry and the models. Everything else is an extra:

- ``train``: datasets and training (tensorflow-datasets without TensorFlow, array_record,
  importlib_resources, orbax-checkpoint, scikit-learn for the embedded digits, tqdm);
- ``bench``: the benchmark against PyTorch (torch, matplotlib, tqdm);
- ``weights``: reading and writing ``.safetensors`` checkpoints (safetensors);
- ``test``: all of the above plus the test tools.

Code that needs an extra imports it where it is used (never at ``import attention_jax``) through
``require``, so a user without it reads which extra to install instead of a bare
``ModuleNotFoundError``::

    tfds = require("tensorflow_datasets", "train", "attention_jax.data")
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRAS", "install_hint", "require", "require_spec"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tensorflow_datasets", "array_record", "importlib_resources", "orbax.checkpoint",
              "sklearn", "tqdm"),
    "bench": ("torch", "matplotlib", "tqdm"),
    "weights": ("safetensors",),
}
"""The import names each extra provides (``pyproject.toml``'s optional dependencies)."""


def install_hint(extra: str) -> str:
    """The command that installs an extra: ``pip install "attention-jax[train]"``."""
    if extra not in EXTRAS:
        raise ValueError(f"install_hint: extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    return f'pip install "attention-jax[{extra}]"'


def _message(module: str, extra: str, feature: str) -> str:
    return f"{feature} needs {module.split('.')[0]}, which is not installed: {install_hint(extra)}"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import an optional module, or raise an ``ImportError`` that names the extra to install.

    Args:
      module: the import name (``"tensorflow_datasets"``, ``"orbax.checkpoint"``).
      extra: the extra that installs it (a key of ``EXTRAS``).
      feature: what needs it, for the message (``"attention-jax train"``).

    Returns:
      The imported module.

    Raises:
      ImportError: ``"<feature> needs <package>, which is not installed: pip install
        "attention-jax[<extra>]""``, chained to the original error. An error raised while the
        module itself imports (a broken install, not a missing one) propagates unchanged.
    """
    install_hint(extra)  # validates the extra's name
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # Only a missing package (or one of its parents) means "install the extra".
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise ImportError(_message(module, extra, feature), name=module) from e


def require_spec(module: str, extra: str, feature: str) -> None:
    """Like ``require`` without importing: check that ``module`` can be found (cheap, keeps a
    heavy import such as torch lazy).

    Raises:
      ImportError: as ``require``.
    """
    install_hint(extra)
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        found = False
    if not found:
        raise ImportError(_message(module, extra, feature), name=module)
