"""``python -m attention_jax._native [--rebuild]``: build the native CPU kernels now (if the cache
holds no checked copy) and print the variant and where they were loaded from.

Exit status 1 if they could not be built or loaded (the message says why), 0 otherwise
(including when ``ATTENTION_JAX_NATIVE=0`` turns them off).
"""

import argparse
import sys

from attention_jax import _native

parser = argparse.ArgumentParser(prog="python -m attention_jax._native",
                                 description=__doc__.splitlines()[0])
parser.add_argument("--rebuild", action="store_true",
                    help="compile again even if the cache holds a checked copy")
args = parser.parse_args()
if args.rebuild:
    print(f"rebuilt {_native.build(force=True)}")
print(_native.status())
sys.exit(0 if _native.available() or _native._state.get("quiet") else 1)
