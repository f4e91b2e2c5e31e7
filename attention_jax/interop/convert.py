"""``attention-jax convert``: timm checkpoint files to attention-jax variables, and back.

Examples::

    # a timm checkpoint (saved by the user; see docs/zoo.md) -> our variables
    attention-jax convert seresnet50 seresnet50.safetensors seresnet50_jax.safetensors
    # and back to timm's state dict (loadable by timm.create_model("seresnet50"))
    attention-jax convert seresnet50 seresnet50_jax.safetensors back.safetensors --to timm

The attention-jax file is ``save_variables``' format (flax paths as keys, the model name and
classes in the metadata): ``attention_jax.interop.load_variables`` reads it, and the variables
feed ``create_model(name)`` (linen ``apply``; nnx through ``load_linen_variables``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import jax
import numpy as np

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``attention-jax convert``.

    Returns:
      An ``argparse.ArgumentParser``.
    """
    from attention_jax.interop.timm import timm_model_names

    p = argparse.ArgumentParser(prog="attention-jax convert",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="models: " + ", ".join(timm_model_names()))
    p.add_argument("model", help="zoo model name (timm's), e.g. seresnet50")
    p.add_argument("src", help="input file: a timm .safetensors/.pth/.bin (default direction) "
                               "or an attention-jax .safetensors (--to timm)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--to", choices=("attention-jax", "timm"), default="attention-jax",
                   help="output format (default: attention-jax)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the timm checkpoint's classifier (default: read from the "
                        "file; a file without a classifier gives a backbone without fc)")
    p.add_argument("--non-strict", action="store_true",
                   help="load what matches, report missing/unexpected keys (missing "
                        "parameters keep their initial values)")
    return p


def _n_params(variables: dict) -> int:
    return sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(variables["params"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attention-jax convert``.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Exit code (0 on success; 2 on bad input, with the reason on stderr).
    """
    from attention_jax.interop.timm import (
        load_state_dict_file,
        load_timm_state_dict,
        load_variables,
        save_state_dict_file,
        save_variables,
        timm_key_map,
        to_timm_state_dict,
    )

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.to == "timm":
            variables, meta = load_variables(args.src)
            if meta.get("model", args.model) != args.model:
                raise ValueError(f"convert: src must hold {args.model!r} variables, got "
                                 f"{args.src!r} recorded as {meta['model']!r}")
            state = to_timm_state_dict(variables, args.model)
            save_state_dict_file(state, args.dst)
            print(f"wrote {len(state)} timm tensors of {args.model} ({_n_params(variables):,} "
                  f"parameters) to {args.dst}")
            return 0
        state = load_state_dict_file(args.src)
        num_classes = args.num_classes
        if num_classes is None:
            fc = timm_key_map(args.model)["params/fc/kernel"]
            num_classes = int(np.shape(state[fc])[0]) if fc in state else None
        loaded = load_timm_state_dict(args.model, state, strict=not args.non_strict,
                                      num_classes=num_classes)
        variables = loaded if not args.non_strict else loaded[0]
        if args.non_strict:
            missing, unexpected = loaded[1]
            print(f"missing keys (initial values kept): {missing or 'none'}\n"
                  f"unexpected keys (ignored): {unexpected or 'none'}")
        save_variables(variables, args.dst, model=args.model, num_classes=num_classes)
        print(f"wrote {args.model} variables ({_n_params(variables):,} parameters, "
              f"num_classes={num_classes}) to {args.dst}")
        return 0
    except ValueError as err:
        print(f"attention-jax convert: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
