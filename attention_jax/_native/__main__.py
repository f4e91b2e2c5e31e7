"""``python -m attention_jax._native``: build the native CPU kernels now and print the status."""

from attention_jax._native import status

print(status())
