"""What to benchmark: one spec per registered mechanism plus the key functional ops.

Specs are generated from the registry (``attention_jax.list_attention()``), so a mechanism that
lands in ``_REGISTRY`` is benchmarked with no edit here. Shapes follow ResNet stages unless the
name has a row in ``SHAPE_OVERRIDES`` (self-attention and sampling have their own representative
shapes). A spec turns into a ``Case`` at a given batch size and dtype: the JAX function with its
parameters and inputs, and, where torch and the parity references are available, the PyTorch
side loaded with the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax as aj

__all__ = [
    "Shape",
    "Spec",
    "Case",
    "RESNET_STAGES",
    "QUICK_SHAPE",
    "SHAPE_OVERRIDES",
    "MEMORY_BOUND",
    "FUNCTIONAL_SPECS",
    "build_specs",
    "shapes_for",
    "parse_shape",
    "make_case",
]

Shape = tuple[int, int, int]
"""Per-example shape. Images: (H, W, C). The ``attention`` function: (heads, tokens, depth)."""

# Full mode: the four ResNet-50 stages at 224x224 input.
RESNET_STAGES: tuple[Shape, ...] = ((56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048))
# Quick mode: one ResNet-like stage scaled down so every mechanism fits a 3-minute budget.
QUICK_SHAPE: Shape = (28, 28, 64)

_SELF_ATTENTION = {
    # Non-local/DANet sit on res3/res4 maps; 64x64x256 (4096 tokens) is the memory case.
    "full": ((28, 28, 512), (14, 14, 1024), (64, 64, 256)),
    # 196 tokens: the score matrix stays small enough for the quick budget.
    "quick": ((14, 14, 128),),
}
_SAMPLING = {
    # The spatial-transformer shapes: MNIST 28x28, cluttered MNIST 60x60, a 56x56x32 feature map.
    "full": ((28, 28, 1), (60, 60, 1), (56, 56, 32)),
    "quick": ((28, 28, 1),),
}
_SCALED_DOT = {
    # (heads, tokens, depth): one head of 1024 tokens (the target), multi-head, long.
    "full": ((1, 1024, 64), (8, 1024, 64), (4, 4096, 64)),
    "quick": ((1, 256, 64),),
}

SHAPE_OVERRIDES: dict[str, dict[str, tuple[Shape, ...]]] = {
    "nl": _SELF_ATTENTION,
    "pam": _SELF_ATTENTION,
    "cam": _SELF_ATTENTION,
    "danet": _SELF_ATTENTION,
    "cca": _SELF_ATTENTION,
    "mhsa2d": _SELF_ATTENTION,
    "stn": _SAMPLING,
    "grid_sample": _SAMPLING,
    "attention": _SCALED_DOT,
}
"""The one place where a name gets shapes other than the ResNet stages (unknown names: default)."""

MEMORY_BOUND = frozenset({"se", "eca", "cbam", "bam", "ge", "gc"})
"""Mechanisms whose forward is dominated by moving the feature map: they get a roofline column."""

FUNCTIONAL_SPECS = ("grid_sample", "attention")
"""Pure functions of ``attention_jax.functional`` timed too (skipped while not yet present)."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to benchmark one mechanism or function.

    Attributes:
      name: registry name (``"se"``) or functional name (``"grid_sample"``).
      kind: ``"module"`` (built by ``create_attention``) or ``"function"``.
      full_shapes: per-example shapes of ``--full``.
      quick_shape: the single per-example shape of ``--quick``.
      memory_bound: whether the roofline column applies.
    """

    name: str
    kind: str
    full_shapes: tuple[Shape, ...]
    quick_shape: Shape
    memory_bound: bool = False


def shapes_for(name: str) -> tuple[tuple[Shape, ...], Shape]:
    """The (full shapes, quick shape) of a name: its override row, or the ResNet stages."""
    row = SHAPE_OVERRIDES.get(name)
    if row is None:
        return RESNET_STAGES, QUICK_SHAPE
    return tuple(row["full"]), row["quick"][0]


def _spec(name: str, kind: str) -> Spec:
    full, quick = shapes_for(name)
    return Spec(name, kind, full, quick, memory_bound=name in MEMORY_BOUND)


def build_specs(only: list[str] | None = None) -> tuple[list[Spec], list[str]]:
    """Every registered mechanism, then the functional ops that exist.

    Args:
      only: keep these names (registry or functional names); ``None`` keeps all.

    Returns:
      ``(specs, notes)``: notes say which functional ops were skipped because
      ``attention_jax.functional`` does not have them yet. Unknown names in ``only`` raise
      ``ValueError`` listing the known ones.
    """
    notes = []
    specs = [_spec(name, "module") for name in aj.list_attention()]
    for fn in FUNCTIONAL_SPECS:
        if getattr(aj.functional, fn, None) is None:
            notes.append(f"functional.{fn} is not in attention_jax.functional yet: not timed")
        else:
            specs.append(_spec(fn, "function"))
    if only:
        known = [s.name for s in specs] + [fn for fn in FUNCTIONAL_SPECS
                                           if fn not in {s.name for s in specs}]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"bench: --only must name known specs {known}, got {unknown}")
        specs = [s for s in specs if s.name in only]
    return specs, notes


def parse_shape(text: str) -> Shape:
    """``"28x28x64"`` -> ``(28, 28, 64)``."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bench: --shape must be HxWxC with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def shape_label(spec: Spec, shape: Shape) -> str:
    """Human-readable per-example shape."""
    if spec.name == "attention":
        return f"h{shape[0]} t{shape[1]} d{shape[2]}"
    return "x".join(str(s) for s in shape)


@dataclasses.dataclass
class Case:
    """One benchmark case: a spec at a shape, batch size and dtype, ready to run.

    ``fwd(params, *inputs)`` is the pure JAX forward; the backward pulls ``cotangent`` (a fixed
    random array shaped like the output, as a loss gradient would be) back to ``params`` and
    every input. ``torch_fwd(*torch_inputs)`` is the PyTorch reference with the same weights
    (``None`` when unavailable, with the reason in ``torch_note``).
    """

    spec: Spec
    shape: Shape
    batch: int
    dtype: str
    params: Any
    inputs: tuple[jax.Array, ...]
    fwd: Callable[..., jax.Array]
    batch_axes: tuple[int, ...]
    param_bytes: int
    cotangent: jax.Array | None = None
    torch_fwd: Callable[..., Any] | None = None
    torch_inputs: tuple[Any, ...] = ()
    torch_cotangent: Any = None
    torch_params: tuple[Any, ...] = ()
    torch_to_jax_layout: Callable[[Any], np.ndarray] | None = None
    torch_note: str = ""

    @property
    def io_bytes(self) -> int:
        """Bytes of the feature map read once plus the output written once (same shape)."""
        x = self.inputs[0]
        return 2 * int(x.size) * x.dtype.itemsize


def _with_cotangent(case: Case, rng: np.random.Generator) -> Case:
    out = jax.eval_shape(case.fwd, case.params, *case.inputs)
    case.cotangent = _normal(rng, out.shape, out.dtype)
    return case


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    # numpy, not jax.random: no compilation per new shape (each row has new shapes).
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def _tree_bytes(tree: Any) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=8)
def _init_variables(name: str, shape: Shape, seed: int) -> dict[str, Any]:
    """Variables of ``create_attention(name, C)`` with its own initialisers, once per shape (they
    do not depend on the batch size), on one example.

    Initialisation is not what is timed, but it costs: eager ``init`` compiles every operation
    of every initialiser separately. So it runs as one ``jit``, with the ``rbg`` PRNG (cheap to
    compile, unlike threefry) and XLA's backend optimisations off for this one-off program.
    """
    module = aj.create_attention(name, shape[-1])
    x = jnp.zeros((1, *shape), jnp.float32)
    key = jax.random.key(seed, impl="rbg")
    lowered = jax.jit(module.init).lower(key, x)
    try:
        init = lowered.compile({"xla_backend_optimization_level": 0,
                                "xla_llvm_disable_expensive_passes": True})
    except Exception:  # a backend that does not take these options
        init = lowered.compile()
    return dict(init(key, x))


def _module_case(spec: Spec, shape: Shape, batch: int, dtype: str, rng: np.random.Generator,
                 seed: int, torch_side: Any) -> Case:
    module = aj.create_attention(spec.name, shape[-1])
    variables = dict(_init_variables(spec.name, tuple(shape), seed))
    params = variables.pop("params", {})
    rest = variables
    x = _normal(rng, (batch, *shape), np.float32)

    def fwd(params, x):
        return module.apply({**rest, "params": params}, x)

    case = Case(spec, shape, batch, dtype, params, (x.astype(jnp.dtype(dtype)),), fwd, (0,),
                _tree_bytes(params) + _tree_bytes(rest))
    _with_cotangent(case, rng)
    if torch_side is not None:
        torch_side.attach_module(case, {**rest, "params": params}, x)
    return case


def _grid_sample_case(spec: Spec, shape: Shape, batch: int, dtype: str,
                      rng: np.random.Generator, seed: int, torch_side: Any) -> Case:
    fn = aj.functional.grid_sample
    h, w, c = shape
    x = _normal(rng, (batch, h, w, c), np.float32)
    # Random affine grids around the identity, some points outside [-1, 1] (zeros padding).
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    base = np.stack([xs, ys, np.ones_like(xs)], -1)  # (H, W, 3)
    theta = np.eye(2, 3) + 0.2 * rng.standard_normal((batch, 2, 3))
    grid = np.einsum("hwk,njk->nhwj", base, theta).astype(np.float32)  # grids stay float32

    def fwd(params, x, grid):
        return fn(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    case = Case(spec, shape, batch, dtype, {}, (x.astype(jnp.dtype(dtype)), grid), fwd, (0, 0), 0)
    _with_cotangent(case, rng)
    if torch_side is not None:
        torch_side.attach_grid_sample(case, x, grid)
    return case


def _attention_case(spec: Spec, shape: Shape, batch: int, dtype: str,
                    rng: np.random.Generator, seed: int, torch_side: Any) -> Case:
    fn = aj.functional.attention
    qkv = [_normal(rng, (batch, *shape), np.float32) for _ in range(3)]
    kwargs = {}
    if "score" in inspect.signature(fn).parameters:
        kwargs["score"] = "scaled_dot"

    def fwd(params, q, k, v):
        return fn(q, k, v, **kwargs)

    case = Case(spec, shape, batch, dtype, {}, tuple(a.astype(jnp.dtype(dtype)) for a in qkv), fwd,
                (0, 0, 0), 0)
    _with_cotangent(case, rng)
    if torch_side is not None:
        torch_side.attach_attention(case, qkv)
    return case


def make_case(spec: Spec, shape: Shape, batch: int, dtype: str, *, seed: int = 0,
              torch_side: Any = None) -> Case:
    """Build a spec's case at one shape, batch size and dtype.

    Args:
      spec: what to build.
      shape: per-example shape (see ``Shape``).
      batch: batch size N.
      dtype: ``"float32"`` or ``"bfloat16"`` (inputs; parameters stay float32 as in Flax).
      seed: PRNG seed for parameters and inputs.
      torch_side: an ``attention_jax.bench.torch_side.TorchSide`` to attach the PyTorch
        reference, or None.

    Returns:
      The ``Case``.
    """
    rng = np.random.default_rng([seed, batch])
    if spec.kind == "module":
        return _module_case(spec, shape, batch, dtype, rng, seed, torch_side)
    if spec.name == "grid_sample":
        return _grid_sample_case(spec, shape, batch, dtype, rng, seed, torch_side)
    if spec.name == "attention":
        return _attention_case(spec, shape, batch, dtype, rng, seed, torch_side)
    raise ValueError(f"make_case: spec.name must be a known function, got {spec.name!r}")
