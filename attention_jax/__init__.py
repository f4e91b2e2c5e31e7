"""attention-jax: the attention mechanisms of computer vision in JAX, linen and nnx.

``attention_jax.functional`` holds the pure math; ``attention_jax.linen`` and
``attention_jax.nnx`` the modules; ``create_attention`` builds any of them by name;
``intermediates`` returns a model's output with the attention maps its modules sowed;
``cpu_compiler_options`` chooses the runtime of XLA:CPU's convolutions for a jitted program.
"""

from attention_jax import functional, linen, nnx
from attention_jax._native import native_disabled
from attention_jax.compiler import cpu_compiler_options
from attention_jax.interop import load_linen_variables, nnx_to_linen_variables
from attention_jax.maps import INTERMEDIATES, intermediates
from attention_jax.registry import (
    SHARED_DEFAULTS,
    create_attention,
    get_attention_class,
    list_attention,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "linen",
    "nnx",
    "create_attention",
    "get_attention_class",
    "list_attention",
    "SHARED_DEFAULTS",
    "load_linen_variables",
    "nnx_to_linen_variables",
    "native_disabled",
    "cpu_compiler_options",
    "intermediates",
    "INTERMEDIATES",
]
