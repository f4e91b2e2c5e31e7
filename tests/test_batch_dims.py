"""Leading batch dimensions (issue #17): ``(..., H, W, C)`` everywhere, none included.

Every registered mechanism (linen and nnx) and every public function of
``attention_jax.functional`` that takes a channels-last map is checked the same way, in one
compiled function per case (compilation dominates the cost):

* extra leading dims ``(2, 3, H, W, C)`` give the flattened batch's result, reshaped;
* an unbatched ``(H, W, C)`` map gives the batched result's slice;
* ``jax.vmap`` over single maps gives the batched result;

and rank < 3 is a ``ValueError`` naming the function (or module) and the argument. BatchNorm
in training mode takes its statistics over all leading dims, as for the flattened batch.
"""

from __future__ import annotations

import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax import functional as F
from attention_jax import linen as L
from attention_jax import nnx as N

NAMES = aj.list_attention()
C, H, W = 8, 5, 5
LEAD = (2, 3)
RNG = np.random.default_rng(0)
X5 = RNG.normal(size=(*LEAD, H, W, C)).astype(np.float32)
TOL = dict(rtol=2e-5, atol=2e-5)


def _fill(tree, seed: int):
    """Concrete random values for an abstract variable tree (linen dict or nnx state).

    Random (not initial) values, so identity-at-init mechanisms compute something; running
    variances positive; a spatial transformer's regression layer (``loc``'s ``fc2``) nearly
    constant (its bias), so that it samples inside the image.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        key = jax.tree_util.keystr(path)
        if "'var'" in key:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        scale = 0.01 if "'loc'" in key and "'fc2'" in key and "'kernel'" in key else 0.3
        return jnp.asarray(scale * rng.normal(size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def _linen(module, *example):
    """(pure apply in eval mode, variables) of a linen module, initialised from ``example``."""
    v = _fill(jax.eval_shape(module.init, jax.random.key(0), *example), 1)
    return (lambda *a, **kw: module.apply(v, *a, **kw)), v


def _nnx(build):
    """(graphdef, state) of an nnx module built by ``build(rngs)``, without running its init."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    return graphdef, _fill(state, 1)


def _nnx_call(graphdef, state, train: bool = False):
    def call(*a, **kw):
        m = nnx.merge(graphdef, state)
        m.train() if train else m.eval()
        return m(*a, **kw)

    return call


def _flat(a):
    return a.reshape(math.prod(LEAD), *a.shape[len(LEAD):])


def check_leading_dims(call, *arrays):
    """``call`` on (2, 3, ...) inputs == on the flattened batch == vmap over single inputs, and
    one unbatched input gives the matching slice. All arrays carry the leading dims LEAD."""

    @jax.jit
    def run(*xs):
        flat = [_flat(a) for a in xs]
        return (call(*flat), call(*xs), call(*(a[1, 2] for a in xs)),
                jax.vmap(call)(*flat))

    flat, many, single, mapped = run(*(jnp.asarray(a) for a in arrays))
    index = 1 * LEAD[1] + 2
    for f, m, s, v in zip(*(jax.tree.leaves(t) for t in (flat, many, single, mapped)),
                          strict=True):
        assert m.shape == LEAD + f.shape[1:], (m.shape, f.shape)
        assert s.shape == f.shape[1:] and v.shape == f.shape
        assert m.dtype == s.dtype == v.dtype == f.dtype
        np.testing.assert_allclose(np.asarray(m).reshape(f.shape), f, **TOL)
        np.testing.assert_allclose(s, f[index], **TOL)
        np.testing.assert_allclose(v, f, **TOL)
    return flat


# ----------------------------------------------------------------------------------------------
# Modules: every registered mechanism, both APIs
# ----------------------------------------------------------------------------------------------


NO_MAPS = {"aspp"}  # mechanisms that sow no attention map


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", NAMES)
def test_registered_mechanism_leading_dims(name, api):
    """The plain call, and the call that collects the sown attention maps
    (``aj.intermediates``): the maps get the leading dims too."""
    if api == "linen":
        m = aj.create_attention(name, C)
        call, v = _linen(m, X5[0, 0])  # init from an unbatched map
        with_maps = lambda x: aj.intermediates(m, x, variables=v)  # noqa: E731
    else:
        graphdef, state = _nnx(lambda r: aj.create_attention(name, C, api="nnx", rngs=r))
        call = _nnx_call(graphdef, state)

        def with_maps(x):
            mod = nnx.merge(graphdef, state)
            mod.eval()
            return aj.intermediates(mod, x)

    flat, (flat2, maps) = check_leading_dims(lambda x: (call(x), with_maps(x)), X5)
    assert flat.shape == (6, H, W, C)
    assert bool(jnp.all(jnp.isfinite(flat)))
    assert all(float(jnp.std(y)) > 0.05 for y in flat)  # every output map varies
    np.testing.assert_array_equal(flat2, flat)
    leaves = jax.tree.leaves(maps)
    assert leaves or name in NO_MAPS
    assert all(a.shape[0] == 6 and bool(jnp.all(jnp.isfinite(a))) for a in leaves)


HIGH5 = RNG.normal(size=(*LEAD, 3, 3, 4)).astype(np.float32)
_PFA = dict(features=2, mid_channels=4, kernel_size=3)

# Public modules outside the registry, and registered ones with options that change what
# they do with the input: name -> (positional and keyword options, inputs with the leading dims
# LEAD, call options (inputs -> (args, kwargs)) or None), the maps the call sows. Same class
# name and options in linen and nnx.
MODULE_VARIANTS = {
    "ChannelGate": ((C,), {}, (X5,), None, {"channel_weights"}),
    "SpatialGate": ((C,), {}, (X5,), None, {"spatial_map"}),
    "PyramidSpatialAttention": ((4,), dict(kernel_size=3), (HIGH5,), None, {"spatial_map"}),
    # ... with a guide: the map from one input rescales another of the same leading dims.
    "PyramidSpatialAttention(guide)": ((4,), dict(kernel_size=3), (HIGH5, HIGH5[..., ::-1]),
                                       lambda x, g: ((x,), dict(guide=g)), {"spatial_map"}),
    # two maps (same leading dims, different H, W, C); its submodules sow
    "PyramidFeatureAttention": ((C, 4), _PFA, (X5, HIGH5), None, {"cpfe", "sa"}),
    # (..., P) output
    "LocalisationNet": ((C,), dict(pool_size=(2, 2)), (X5,), None, set()),
    # a fixed input_size (H, W), read from the end of the shape
    "MultiHeadSelfAttention2d(relative)": (
        (C,), dict(num_heads=2, position="relative", input_size=(H, W)), (X5,), None,
        {"attention"}),
    "MultiHeadSelfAttention2d(absolute)": (
        (C,), dict(num_heads=2, position="absolute", input_size=(H, W)), (X5,), None,
        {"attention"}),
    # the transform (theta, grid) comes back with the same leading dims
    "SpatialTransformer(return_transform)": (
        (C,), dict(transform="tps", tps_grid_size=(2, 2), out_size=(4, 3)), (X5,),
        lambda x: ((x,), dict(return_transform=True)),
        {"grid", "control_points", "params", "sampled"}),
}


def test_every_public_module_is_covered():
    """A new module class in linen / nnx joins the registry or the table above."""
    covered = {aj.get_attention_class(n).__name__ for n in NAMES}
    covered |= {n.split("(")[0] for n in MODULE_VARIANTS}
    assert set(L.__all__) == set(N.__all__)
    assert not {n for n in L.__all__ if inspect.isclass(getattr(L, n))} - covered


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", MODULE_VARIANTS)
def test_module_variant_leading_dims(name, api):
    """The plain call and the one collecting the sown maps, as for the registered ones."""
    args, kw, arrays, options, map_names = MODULE_VARIANTS[name]
    options = options or (lambda *a: (a, {}))
    cls = name.split("(")[0]
    if api == "linen":
        m = getattr(L, cls)(*args, **kw)
        example = options(*(a[0, 0] for a in arrays))  # init from unbatched maps
        v = _fill(jax.eval_shape(lambda *a: m.init(jax.random.key(0), *a, **example[1]),
                                 *example[0]), 1)

        def call(*a):
            a, k = options(*a)
            return m.apply(v, *a, **k), aj.intermediates(m, *a, variables=v, **k)
    else:
        graphdef, state = _nnx(lambda r: getattr(N, cls)(*args, **kw, rngs=r))

        def call(*a):
            a, k = options(*a)
            mod = nnx.merge(graphdef, state)
            mod.eval()
            return mod(*a, **k), aj.intermediates(mod, *a, **k)

    out, (out2, maps) = check_leading_dims(call, *arrays)
    jax.tree.map(np.testing.assert_array_equal, out2, out)
    leaves = jax.tree.leaves(out)
    assert len(leaves) == (4 if cls == "SpatialTransformer" else 1)  # y, theta, grid, params
    for a in leaves:
        assert a.shape[0] == math.prod(LEAD) and bool(jnp.all(jnp.isfinite(a)))
    assert all(float(jnp.std(y)) > 0.05 for y in leaves[0])  # every output map varies
    assert set(maps) == map_names
    assert all(a.shape[0] == math.prod(LEAD) for a in jax.tree.leaves(maps))


def _has_batch_stats(name: str) -> bool:
    v = jax.eval_shape(aj.create_attention(name, C).init, jax.random.key(0), X5[0])
    return bool(jax.tree.leaves(v.get("batch_stats", {})))


BN_NAMES = [n for n in NAMES if _has_batch_stats(n)]


def test_batchnorm_mechanisms_found():
    assert {"bam", "ca", "sk", "splat", "aspp", "danet", "pfa"} <= set(BN_NAMES)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", BN_NAMES)
def test_batchnorm_training_statistics_cover_all_leading_dims(name, api):
    """Training mode: (2, 3, H, W, C) normalises and updates the running statistics exactly as
    the flattened (6, H, W, C) batch does."""
    if api == "linen":
        m = aj.create_attention(name, C)
        _, v = _linen(m, X5[0, 0])
        run = jax.jit(lambda x: m.apply(v, x, train=True, mutable=["batch_stats"]))
    else:
        graphdef, state = _nnx(lambda r: aj.create_attention(name, C, api="nnx", rngs=r))

        @jax.jit
        def train_step(state, x):
            mod = nnx.merge(graphdef, state)  # inside the trace: its BatchStats may be updated
            mod.train()
            y = mod(x)
            return y, nnx.state(mod, nnx.BatchStat)

        run = lambda x: train_step(state, x)  # noqa: E731

    y5, stats5 = run(X5)
    yf, statsf = run(_flat(X5))
    np.testing.assert_allclose(np.asarray(y5).reshape(yf.shape), yf, **TOL)
    leaves5, leavesf = jax.tree.leaves(stats5), jax.tree.leaves(statsf)
    assert len(leaves5) == len(leavesf) >= 2
    for a, b in zip(leaves5, leavesf, strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    # ... and they are batch statistics: the first row of three images alone gives others.
    y1, stats1 = run(X5[0])
    assert not all(np.allclose(a, b, **TOL) for a, b in zip(jax.tree.leaves(stats1), leavesf,
                                                             strict=True))
    assert not np.allclose(np.asarray(y1), np.asarray(yf[:3]), **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_rank_below_three_is_a_value_error(name):
    cls = aj.get_attention_class(name).__name__
    msg = rf"{cls}: x must be at least rank 3 \(\.\.\., H, W, C\), got shape \(5, {C}\)"
    x2 = jnp.ones((5, C))
    with pytest.raises(ValueError, match=msg):
        aj.create_attention(name, C).init(jax.random.key(0), x2)
    graphdef, state = _nnx(lambda r: aj.create_attention(name, C, api="nnx", rngs=r))
    with pytest.raises(ValueError, match=msg):
        jax.eval_shape(_nnx_call(graphdef, state), x2)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _dense(cin: int, cout: int, seed: int = 0):
    """A 1x1 convolution with fixed random weights (any leading dims)."""
    w = jnp.asarray(np.random.default_rng(100 + seed).normal(size=(cin, cout)) / np.sqrt(cin),
                    jnp.float32)
    return lambda t: jnp.einsum("...c,cd->...d", t, w)


def _ident(t):
    return t


d = _dense
GAMMA = jnp.asarray([0.7], jnp.float32)
THETA5 = (np.eye(2, 3) + 0.2 * RNG.normal(size=(*LEAD, 2, 3))).astype(np.float32)
GRID5 = RNG.uniform(-1.2, 1.2, size=(*LEAD, 4, 3, 2)).astype(np.float32)
BASE = F.tps_base_points((2, 3))
REL_TABLE = jnp.asarray(RNG.normal(size=((2 * H - 1) * (2 * W - 1), 2)), jnp.float32)


def _loc(x):
    """A localisation net whose output is near the identity affine transform."""
    p = F.localisation_net(x, conv1=d(C, 2), conv2=d(2, 3, 1), fc1=d(12, 4, 2),
                           fc2=d(4, 6, 3), pool_size=(2, 2))
    return 0.1 * p + jnp.asarray(F.identity_transform_params("affine"))


def _pam(t):
    return F.position_attention(t, query=d(2, 1), key=d(2, 1, 1), value=d(2, 2, 2), gamma=GAMMA)


# name -> (call, arrays with the leading dims LEAD). The name is the function under test.
FUNCTIONS = {
    "global_avg_pool": (F.global_avg_pool, (X5,)),
    "global_max_pool": (lambda x: F.global_max_pool(x, keepdims=True), (X5,)),
    "channel_avg_pool": (F.channel_avg_pool, (X5,)),
    "channel_max_pool": (lambda x: F.channel_max_pool(x, keepdims=False), (X5,)),
    "channel_avg_max_pool": (F.channel_avg_max_pool, (X5,)),
    "avg_pool_h": (F.avg_pool_h, (X5,)),
    "avg_pool_w": (F.avg_pool_w, (X5,)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, kernel_size=3, stride=2, padding=1,
                                          count_include_pad=False), (X5,)),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), (X5,)),
    "covariance_pool": (F.covariance_pool, (X5,)),
    "squeeze_excite": (lambda x: F.squeeze_excite(x, reduce=d(C, 2), expand=d(2, C),
                                                  add_maxpool=True), (X5,)),
    "efficient_channel_attention": (
        lambda x: F.efficient_channel_attention(x, conv=lambda t: 0.5 * t), (X5,)),
    "ge_gather": (lambda x: F.ge_gather(x, convs=[lambda t: t[:, ::2, ::2]] * 2,
                                        norms=[lambda t: 2 * t] * 2), (X5,)),
    "interpolate_nearest": (lambda x: F.interpolate_nearest(x, (7, 3)), (X5,)),
    "gather_excite": (lambda x: F.gather_excite(x, extent=2, reduce=d(C, 2), expand=d(2, C)),
                      (X5,)),
    "global_context": (lambda x: F.global_context(
        x, attn=d(C, 1), add_transform=(d(C, 2), _ident, d(2, C)),
        scale_transform=(d(C, 2, 1), _ident, d(2, C, 2))), (X5,)),
    "second_order_channel": (lambda x: F.second_order_channel(x, reduce=d(C, 2),
                                                              expand=d(2, C)), (X5,)),
    "conv_norm_act": (lambda x: F.conv_norm_act(x, conv=d(C, 4), norm=lambda t: t - 0.1),
                      (X5,)),
    "aspp": (lambda x: F.aspp(x, branches=[d(C, 4), d(C, 4, 1)], pool_branch=d(C, 4, 2),
                              project=d(12, C)), (X5,)),
    "cbam_channel_gate": (lambda x: F.cbam_channel_gate(x, reduce=d(C, 2), expand=d(2, C)),
                          (X5,)),
    "cbam_spatial_gate": (lambda x: F.cbam_spatial_gate(x, conv=d(2, 1)), (X5,)),
    "cbam": (lambda x: F.cbam(x, reduce=d(C, 2), expand=d(2, C), conv=d(2, 1)), (X5,)),
    "cbam(return_maps)": (lambda x: F.cbam(x, reduce=d(C, 2), expand=d(2, C), conv=d(2, 1),
                                           return_maps=True), (X5,)),
    "bam": (lambda x: F.bam(x, fc1=d(C, 2), bn1=_ident, fc2=d(2, C), conv_reduce=d(C, 2, 1),
                            bn_reduce=_ident, convs_di=[d(2, 2, 2)], bns_di=[_ident],
                            conv_final=d(2, 1)), (X5,)),
    "coordinate_attention": (lambda x: F.coordinate_attention(
        x, conv1=d(C, 2), norm=_ident, conv_h=d(2, C), conv_w=d(2, C, 1)), (X5,)),
    "selective_kernel": (lambda x: F.selective_kernel(
        x, convs=[d(C, C), d(C, C, 1)], reduce=d(C, 2), select=d(2, 2 * C)), (X5,)),
    "split_attention": (lambda x: F.split_attention(
        x, conv=d(C, 2 * C), reduce=d(C, 2), expand=d(2, 2 * C), radix=2), (X5,)),
    "context_aware_pyramid": (lambda x: F.context_aware_pyramid(
        x, convs=[d(C, 2), d(C, 2, 1)], reduce=d(4, 2), expand=d(2, 4)), (X5,)),
    "pyramid_spatial_map": (lambda x: F.pyramid_spatial_map(
        x, branches=[[(d(C, 2), None), (d(2, 1), None)], [(d(C, 1, 1), None)]]), (X5,)),
    "pyramid_feature_attention": (lambda lo, hi: F.pyramid_feature_attention(
        lo, hi, cpfe=d(4, 4), high_proj=d(4, 3), low_proj=d(C, 2), spatial_map=d(3, 1),
        head=d(5, 1)), (X5, HIGH5)),
    "localisation_net": (_loc, (X5,)),
    "spatial_transformer": (lambda x: F.spatial_transformer(
        x, localisation=_loc, out_size=(4, 3), return_transform=True), (X5,)),
    "non_local": (lambda x: F.non_local(x, theta=d(C, 4), phi=d(C, 4, 1), g=d(C, 4, 2),
                                        out=d(4, C), sub_sample=True), (X5,)),
    "position_attention": (lambda x: F.position_attention(
        x, query=d(C, 2), key=d(C, 2, 1), value=d(C, C, 2), gamma=GAMMA), (X5,)),
    "channel_self_attention": (lambda x: F.channel_self_attention(x, gamma=GAMMA), (X5,)),
    "dual_attention_head": (lambda x: F.dual_attention_head(
        x, conv5a=d(C, 2), conv5c=d(C, 2, 1), pam=_pam,
        cam=lambda t: F.channel_self_attention(t, gamma=GAMMA), conv51=d(2, 2, 3),
        conv52=d(2, 2, 4), conv8=d(2, 3)), (X5,)),
    "criss_cross_attention": (lambda x: F.criss_cross_attention(
        x, query=d(C, 2), key=d(C, 2, 1), value=d(C, C, 2), gamma=GAMMA), (X5,)),
    "criss_cross_attention(return_maps)": (lambda x: F.criss_cross_attention(
        x, query=d(C, 2), key=d(C, 2, 1), value=d(C, C, 2), gamma=GAMMA, recurrence=3,
        return_maps=True), (X5,)),
    "multi_head_self_attention_2d": (lambda x: F.multi_head_self_attention_2d(
        x, qkv=d(C, 3 * C), proj=d(C, C, 1), num_heads=2,
        rel_pos_table=REL_TABLE), (X5,)),
    "grid_sample": (lambda x, g: F.grid_sample(x, g, mode="bicubic", padding_mode="border"),
                    (X5, GRID5)),
    "grid_sample(bilinear)": (F.grid_sample, (X5, GRID5)),
    "affine_grid": (lambda t: F.affine_grid(t, (*t.shape[:-2], 4, 3, 1)), (THETA5,)),
    "perspective_grid": (lambda t: F.perspective_grid(
        jnp.concatenate([t, jnp.broadcast_to(jnp.asarray([[0.1, 0.0, 1.0]]),
                                             (*t.shape[:-2], 1, 3))], -2),
        (*t.shape[:-2], 4, 3, 1)), (THETA5,)),
    "tps_grid": (lambda t: F.tps_grid(
        jnp.asarray(BASE) + 0.1 * t.reshape(*t.shape[:-2], 6)[..., None],
        (*t.shape[:-2], 4, 3, 1), base_points=BASE), (THETA5,)),
    "transform_grid": (lambda t: F.transform_grid(
        t.reshape(*t.shape[:-2], 6), (*t.shape[:-2], 4, 3, 1)), (THETA5,)),
}

# Functions on other layouts with leading dims: (..., T, D) tokens, (..., C, C) matrices,
# gates and weights of any shape. They broadcast over the leading dims natively.
Q5 = RNG.normal(size=(*LEAD, 7, 8)).astype(np.float32)
K5 = RNG.normal(size=(*LEAD, 9, 8)).astype(np.float32)
V5 = RNG.normal(size=(*LEAD, 9, 8)).astype(np.float32)
MASK5 = RNG.uniform(size=(*LEAD, 7, 9)) < 0.7
B5 = RNG.normal(size=(*LEAD, 4, 4)).astype(np.float32)
W_Q, W_K = (jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32) for _ in range(2))
V_ADD = jnp.asarray(RNG.normal(size=(5,)), jnp.float32)
CHUNKS = dict(implementation="chunked", q_chunk_size=3, k_chunk_size=4)
FUNCTIONS.update({
    "rescale": (lambda x, w: F.rescale(x, w), (X5, X5[..., :1, :1, :])),
    "gate": (lambda t: F.gate(t, kind="hard_sigmoid"), (X5,)),
    "branch_softmax": (lambda t: F.branch_softmax(t, axis=-2), (Q5,)),
    "radix_softmax": (lambda t: F.radix_softmax(t, radix=2, cardinality=2), (Q5,)),
    "newton_schulz_sqrt": (lambda b: F.newton_schulz_sqrt(b @ jnp.swapaxes(b, -1, -2)), (B5,)),
    "dot_scores": (F.dot_scores, (Q5, K5)),
    "scaled_dot_scores": (F.scaled_dot_scores, (Q5, K5)),
    "cosine_scores": (lambda q, k: F.cosine_scores(q, k, temperature=0.5), (Q5, K5)),
    "additive_scores": (lambda q, k: F.additive_scores(q, k, w_q=W_Q, w_k=W_K, v=V_ADD),
                        (Q5, K5)),
    "attention_weights": (lambda q, k, m: F.attention_weights(F.dot_scores(q, k), mask=m),
                          (Q5, K5, MASK5)),
    "attend": (lambda q, k, v: F.attend(F.attention_weights(F.dot_scores(q, k)), v),
               (Q5, K5, V5)),
    "attention": (lambda q, k, v, m: F.attention(q, k, v, mask=m, implementation="xla"),
                  (Q5, K5, V5, MASK5)),
    "attention(chunked)": (lambda q, k, v, m: F.attention(q, k, v, mask=m, **CHUNKS),
                           (Q5, K5, V5, MASK5)),
    "attention(chunked additive)": (lambda q, k, v: F.attention(
        q, k, v, score="additive", score_params=dict(w_q=W_Q, w_k=W_K, v=V_ADD), **CHUNKS),
        (Q5, K5, V5)),
    "attention(native)": (lambda q, k, v: F.attention(q, k, v, implementation="native"),
                          (Q5, K5, V5)),
})

# Public functions taking an array first that have no batch: a reason each.
NOT_BATCHED = {
    "relative_position_bias": "table (L, heads) is a parameter; the bias has no batch axis",
}


def test_every_function_taking_an_array_is_covered():
    """A new public function taking an array (a map, transforms, tokens, logits) joins the
    table, or says why it has no batch."""
    missing = []
    for name in F.__all__:
        f = getattr(F, name)
        if not inspect.isfunction(f):
            continue
        first = next(iter(inspect.signature(f).parameters.values()))
        if str(first.annotation).startswith("jax.Array") and name not in NOT_BATCHED and not any(
                n.split("(")[0] == name for n in FUNCTIONS):
            missing.append(name)
    assert not missing


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_leading_dims(name):
    call, arrays = FUNCTIONS[name]
    flat = check_leading_dims(call, *arrays)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(flat))


def _takes_maps(name: str) -> bool:
    """Decorated with ``batch_dims`` (validates (..., H, W, C)) and called on X5 first."""
    return hasattr(getattr(F, name.split("(")[0]), "__wrapped__") and FUNCTIONS[name][1][0] is X5


@pytest.mark.parametrize("name", [n for n in FUNCTIONS if _takes_maps(n)])
def test_function_rank_below_three_is_a_value_error(name):
    call, arrays = FUNCTIONS[name]
    fn = re.escape(name.split("(")[0])
    arg = "low" if name == "pyramid_feature_attention" else "x"
    with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be at least rank 3 "
                                         rf"\(\.\.\., H, W, C\), got shape \(5, {C}\)$"):
        call(jnp.ones((5, C)), *arrays[1:])


def test_mismatched_leading_dims_are_a_value_error():
    with pytest.raises(ValueError, match=r"^grid_sample: grid must be the leading \(batch\) dims "
                                         r"\(2, 3\) of x, got shape \(3, 2, 4, 3, 2\)$"):
        F.grid_sample(jnp.asarray(X5), jnp.zeros((3, 2, 4, 3, 2)))
    with pytest.raises(ValueError, match=r"^grid_sample: grid must be shape \(\.\.\., Ho, Wo, 2\), "
                                         r"got shape \(2, 3, 4, 3, 3\)$"):
        F.grid_sample(jnp.asarray(X5), jnp.zeros((2, 3, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"^pyramid_feature_attention: high must be the leading "
                                         r"\(batch\) dims \(2, 3\) of low"):
        F.pyramid_feature_attention(jnp.asarray(X5), jnp.asarray(HIGH5[0]), cpfe=_ident,
                                    high_proj=_ident, low_proj=_ident, spatial_map=_ident,
                                    head=_ident)
    with pytest.raises(ValueError, match=r"^affine_grid: size must be leading dims \(2, 3\) "):
        F.affine_grid(jnp.asarray(THETA5), (3, 2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"^affine_grid: size must be a 5-tuple "):
        F.affine_grid(jnp.asarray(THETA5), (6, 4, 4, 1))
    with pytest.raises(ValueError, match=r"^transform_grid: size must be a 3-tuple "):
        F.transform_grid(jnp.zeros((6,)), (1, 4, 4, 1))


def test_batch_dims_note_in_docstrings():
    """The decorator documents itself: help() of a forward says what leading dims do."""
    assert "any number of leading dimensions" in F.squeeze_excite.__doc__
    assert "``grid`` (..., Ho, Wo, 2)" in F.grid_sample.__doc__
    assert list(inspect.signature(F.grid_sample).parameters)[:2] == ["x", "grid"]
