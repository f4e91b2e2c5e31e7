"""PyTorch (NCHW) reference implementations, written from the papers and official code.

Used only by tests and benchmarks. Submodule names match our parameter names so that
``tests.parity.jax_to_torch_state`` maps one tree onto the other by path.
"""
