"""Attention maps you can see: every module that computes a map sows it, in linen and nnx.

For every registered mechanism (and the public modules outside the registry), in both APIs:

* the sown names and shapes are the documented ones (``EXPECTED``, written by hand from each
  paper's definitions, and the table in CONTRIBUTING.md);
* the output is unchanged, bit for bit, with and without collecting (eval and train mode, with
  the same updated batch statistics);
* the default call builds no map: its jaxpr is the collecting call's jaxpr with the maps
  dead-code-eliminated, and ``init`` / a plain nnx call store nothing;
* the sown values equal the maps recomputed from the PyTorch references (loaded with the same
  weights, away from their initialisation, random running statistics), and nnx's equal
  linen's;
* softmax maps sum to one where they are softmaxes.
"""

from __future__ import annotations

import doctest
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from flax import linen as fnn
from flax import nnx
from jax._src.interpreters.partial_eval import dce_jaxpr

import attention_jax as aj
from attention_jax import linen as L
from attention_jax import nnx as N
from attention_jax.torch_reference import hybrid as ref_hybrid
from attention_jax.torch_reference import saliency as ref_saliency
from attention_jax.torch_reference import self_attention as ref_sa
from attention_jax.torch_reference.channel import GatherExcite as RefGatherExcite
from attention_jax.torch_reference.channel import covpool, sqrtm_newton_schulz
from attention_jax.torch_reference.registry import REFERENCES
from tests.parity import (
    assert_close,
    load_into_torch,
    nhwc_to_nchw,
    perturb_params,
    randomize_batch_stats,
)

NAMES = aj.list_attention()
C = 32
NB, H, W = 2, 6, 5  # H != W: a swapped axis shows
X = np.random.default_rng(0).normal(size=(NB, H, W, C)).astype(np.float32)
T = H * W

# The documented maps: registry name -> {map name: shape} (nested dicts for submodules).
EXPECTED = {
    "aspp": {},
    "bam": {"channel_logits": (NB, 1, 1, C), "spatial_logits": (NB, H, W, 1),
            "attention_map": (NB, H, W, C)},
    "ca": {"height_weights": (NB, H, 1, C), "width_weights": (NB, 1, W, C)},
    "cam": {"attention": (NB, C, C)},
    "cbam": {"channel_weights": (NB, 1, 1, C), "spatial_map": (NB, H, W, 1)},
    "cca": {"attention": (NB, 2, H, W, H + W)},
    "danet": {"sa": {"attention": (NB, T, T)}, "sc": {"attention": (NB, C // 4, C // 4)}},
    "eca": {"channel_weights": (NB, 1, 1, C)},
    "gc": {"context_weights": (NB, H, W, 1), "channel_add": (NB, 1, 1, C)},
    "ge": {"channel_weights": (NB, 1, 1, C)},
    "mhsa2d": {"attention": (NB, 8, T, T)},
    "nl": {"attention": (NB, T, T)},
    "pam": {"attention": (NB, T, T)},
    "pfa": {"channel_weights": (NB, 1, 1, C)},
    "se": {"channel_weights": (NB, 1, 1, C)},
    "sk": {"branch_weights": (NB, 2, C)},
    "soca": {"channel_weights": (NB, 1, 1, C)},
    "splat": {"branch_weights": (NB, 2, C)},
    "stn": {"params": (NB, 6), "grid": (NB, H, W, 2), "matrix": (NB, 2, 3),
            "sampled": (NB, H, W, C)},
}

# Softmax maps: (registry name, path to the map, axes it sums to 1 over).
SOFTMAX = [
    ("nl", ("attention",), (-1,)), ("pam", ("attention",), (-1,)),
    ("cam", ("attention",), (-1,)), ("cca", ("attention",), (-1,)),
    ("mhsa2d", ("attention",), (-1,)), ("danet", ("sa", "attention"), (-1,)),
    ("danet", ("sc", "attention"), (-1,)), ("gc", ("context_weights",), (1, 2)),
    ("sk", ("branch_weights",), (1,)), ("splat", ("branch_weights",), (1,)),
]


def unwrap(tree):
    """Each sown name holds a tuple with one entry per call: one call here."""
    if isinstance(tree, tuple):
        assert len(tree) == 1, f"sown {len(tree)} times"
        return tree[0]
    return {k: unwrap(v) for k, v in tree.items()}


def shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def leaves(tree, prefix=()):
    """(path, leaf) in sorted key order (nnx's dicts are sorted, linen's in sowing order)."""
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from leaves(tree[k], (*prefix, k))
    else:
        yield prefix, tree


def variables_for(m, x, seed=0):
    """Initialised, then moved off the initialisation, with random running statistics."""
    k_init, k_stats, k_perturb = jax.random.split(jax.random.key(seed), 3)
    v = randomize_batch_stats(dict(m.init(k_init, x)), k_stats)
    return perturb_params(v, k_perturb)


def linen_case(name, x=X, **kw):
    m = aj.create_attention(name, C, **kw)
    return m, variables_for(m, jnp.asarray(x))


def nnx_twin(name, v, **kw):
    n = aj.create_attention(name, C, api="nnx", rngs=nnx.Rngs(3), **kw)
    aj.load_linen_variables(n, v)
    n.eval()
    return n


# --- names, shapes, unchanged outputs -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_names_have_documented_maps(name):
    assert name in EXPECTED, f"{name}: add its maps to EXPECTED and CONTRIBUTING.md's table"


@pytest.mark.parametrize("name", NAMES)
def test_linen_and_nnx_sow_the_documented_maps_without_changing_the_output(name):
    m, v = linen_case(name)
    x = jnp.asarray(X)
    y_plain = m.apply(v, x)
    y, maps = aj.intermediates(m, x, variables=v)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_plain))
    maps = unwrap(maps)
    assert shapes(maps) == EXPECTED[name]

    n = nnx_twin(name, v)
    yn_plain = n(x)
    yn, maps_n = aj.intermediates(n, x)
    np.testing.assert_array_equal(np.asarray(yn), np.asarray(yn_plain))
    maps_n = unwrap(maps_n)
    assert shapes(maps_n) == EXPECTED[name]
    for (path, a), (path_n, b) in zip(leaves(maps), leaves(maps_n), strict=True):
        assert path == path_n
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6,
                                   err_msg=str(path))


def _has_batch_stats(name):
    """Whether ``name``'s variables hold running statistics (an abstract init: this runs at
    collection, in every xdist worker, where a real one took ~15 s for the registry)."""
    m = aj.create_attention(name, C)
    return "batch_stats" in jax.eval_shape(m.init, jax.random.key(0), jnp.asarray(X))


@pytest.mark.parametrize("name", [n for n in NAMES if _has_batch_stats(n)])
def test_train_mode_output_and_statistics_unchanged(name):
    """In training (BatchNorm on batch statistics), collecting changes neither the output nor
    the updated running statistics, in either API."""
    m, v = linen_case(name)
    x = jnp.asarray(X)
    y0, s0 = m.apply(v, x, train=True, mutable=["batch_stats"])
    y1, s1 = m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
    assert set(s1) == {"batch_stats"} | ({"intermediates"} if EXPECTED[name] else set())
    for a, b in zip(jax.tree.leaves(s0["batch_stats"]), jax.tree.leaves(s1["batch_stats"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))

    plain, captured = nnx_twin(name, v), nnx_twin(name, v)
    plain.train()
    captured.train()
    yp = plain(x)
    yc, _ = nnx.capture(captured, nnx.Intermediate)(x)
    np.testing.assert_array_equal(np.asarray(yc), np.asarray(yp))
    for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.BatchStat)),
                    jax.tree.leaves(nnx.state(captured, nnx.BatchStat)), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


# --- no cost unless asked ---------------------------------------------------------------


def _dce_equal(j_plain, j_collect):
    """The collecting jaxpr, with every output beyond the plain call's dead-code-eliminated,
    is the plain call's jaxpr: the maps add work only to what nobody asked for."""
    n_out = len(j_plain.jaxpr.outvars)
    used = [True] * n_out + [False] * (len(j_collect.jaxpr.outvars) - n_out)
    pruned, _ = dce_jaxpr(j_collect.jaxpr, used)
    plain, _ = dce_jaxpr(j_plain.jaxpr, [True] * n_out)
    return str(pruned) == str(plain)


@pytest.mark.parametrize("name", NAMES)
def test_default_call_builds_no_maps(name):
    m, v = linen_case(name)
    x = jnp.asarray(X)
    j_plain = jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x)
    j_collect = jax.make_jaxpr(lambda v, x: m.apply(v, x, mutable=["intermediates"]))(v, x)
    assert _dce_equal(j_plain, j_collect)
    n_maps = len(list(leaves(EXPECTED[name])))  # one output per map (shapes are leaves)
    assert len(j_collect.jaxpr.outvars) == len(j_plain.jaxpr.outvars) + n_maps

    n = nnx_twin(name, v)
    graph, state = nnx.split(n)

    def plain(state, x):
        return nnx.merge(graph, state)(x)

    def collect(state, x):
        return nnx.capture(nnx.merge(graph, state), nnx.Intermediate)(x)

    jn_plain = jax.make_jaxpr(plain)(state, x)
    jn_collect = jax.make_jaxpr(collect)(state, x)
    assert _dce_equal(jn_plain, jn_collect)
    assert len(jn_collect.jaxpr.outvars) == len(jn_plain.jaxpr.outvars) + n_maps


def _avals(jaxpr):
    """Shapes of every value a jaxpr computes, nested jaxprs (pjit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _avals(inner)


@pytest.mark.parametrize("name", ["nl", "pam", "mhsa2d"])
def test_pairwise_maps_only_when_asked(name):
    """On a map big enough for the chunked/native path (above ``CHUNKED_THRESHOLD`` score
    elements), the default call builds no (T, T) array anywhere, nested jaxprs included; the
    collecting call does: the map it returns. Traced only, never run."""
    x = jnp.zeros((2, 64, 64, C), jnp.float32)
    t = 64 * 64
    m = aj.create_attention(name, C)
    v = m.init(jax.random.key(0), x[:, :4, :4])  # the parameters do not depend on H, W

    def has_square(closed):
        return any(s[-2:] == (t, t) for s in _avals(closed.jaxpr))

    assert not has_square(jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x))
    assert has_square(jax.make_jaxpr(
        lambda v, x: m.apply(v, x, mutable=["intermediates"]))(v, x))


def test_init_and_plain_nnx_calls_store_nothing():
    x = jnp.asarray(X)
    for name in NAMES:
        m = aj.create_attention(name, C)
        v = m.init(jax.random.key(0), x)
        assert set(v) <= {"params", "batch_stats"}, (name, set(v))
        _, state = m.apply(v, x, mutable=True)  # everything mutable, e.g. a debugging call
        if EXPECTED[name]:
            assert "intermediates" in state, name
        n = aj.create_attention(name, C, api="nnx", rngs=nnx.Rngs(0))
        n(x)
        assert not jax.tree.leaves(nnx.state(n, nnx.Intermediate)), name


# --- sown values equal the maps recomputed from the PyTorch references ---------------------


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def _se_gate(r, s):
    return torch.sigmoid(r.fc2(torch.relu(r.fc1(s))))


def _cca_attention(r, x):
    """The reference's criss-cross softmax of each pass, (N, R, H, W, H + W)."""
    out = []
    for _ in range(r.recurrence):
        b, _, h, w = x.shape
        q, k = r.query(x), r.key(x)
        e_col = torch.einsum("nchw,ncgw->nhwg", q, k)
        e_col = e_col + ref_sa._inf_diag(b, h, w).view(b, w, h, h).permute(0, 2, 1, 3)
        e_row = torch.einsum("nchw,nchv->nhwv", q, k)
        out.append(torch.cat([e_col, e_row], -1).softmax(-1))
        x = r.once(x)
    return torch.stack(out, 1).numpy()


def _recompute(name, r, x):
    """The maps of reference ``r`` on NCHW ``x``, written from its own layers."""
    n, c, h, w = x.shape
    mean = x.mean((2, 3), keepdim=True)
    if name in ("se", "ge"):
        return {"channel_weights": _nhwc(_se_gate(r, mean))}
    if name == "eca":
        y = r.conv(x.mean((2, 3)).unsqueeze(1))  # (N, 1, C)
        return {"channel_weights": torch.sigmoid(y).reshape(n, 1, 1, c).numpy()}
    if name == "soca":
        z = sqrtm_newton_schulz(covpool(x), r.iterations).mean(1).view(n, c, 1, 1)
        return {"channel_weights": _nhwc(_se_gate(r, z))}
    if name == "gc":
        p = r.conv_attn(x).reshape(n, h * w).softmax(-1)
        context = (x.reshape(n, c, h * w) @ p[:, :, None]).view(n, c, 1, 1)
        return {"context_weights": p.reshape(n, h, w, 1).numpy(),
                "channel_add": _nhwc(r._transform("add", context))}
    if name == "cbam":
        g = r.channel
        mc = torch.sigmoid(g.fc2(torch.relu(g.fc1(mean)))
                           + g.fc2(torch.relu(g.fc1(x.amax((2, 3), keepdim=True)))))
        x1 = x * mc
        pooled = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
        ms = torch.sigmoid(r.spatial.bn(r.spatial.conv(pooled)))
        return {"channel_weights": _nhwc(mc), "spatial_map": _nhwc(ms)}
    if name == "bam":
        mc = r.fc2(torch.relu(r.bn1(r.fc1(mean.flatten(1)))))[:, :, None, None]
        s = torch.relu(r.bn_reduce(r.conv_reduce(x)))
        s = torch.relu(r.bn_di_0(r.conv_di_0(s)))
        s = torch.relu(r.bn_di_1(r.conv_di_1(s)))
        ms = r.conv_final(s)
        return {"channel_logits": _nhwc(mc), "spatial_logits": _nhwc(ms),
                "attention_map": _nhwc(torch.sigmoid(mc + ms))}
    if name == "ca":
        x_h = x.mean(3, keepdim=True)  # (N, C, H, 1)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)  # (N, C, W, 1)
        y = r.act(r.bn1(r.conv1(torch.cat([x_h, x_w], 2))))
        y_h, y_w = torch.split(y, [h, w], 2)
        return {"height_weights": _nhwc(torch.sigmoid(r.conv_h(y_h))),
                "width_weights": _nhwc(torch.sigmoid(r.conv_w(y_w.permute(0, 1, 3, 2))))}
    if name == "sk":
        feats = [torch.relu(getattr(r, f"bn{i}")(getattr(r, f"conv{i}")(x)))
                 for i in range(r.num_paths)]
        s = sum(feats).mean((2, 3), keepdim=True)
        z = torch.relu(r.fc_bn(r.fc_reduce(s)))
        return {"branch_weights": r.fc_select(z).view(n, r.num_paths, -1).softmax(1).numpy()}
    if name == "splat":
        y = torch.relu(r.bn0(r.conv(x)))
        gap = sum(torch.split(y, r.out, 1)).mean((2, 3), keepdim=True)
        a = r.rsoftmax(r.fc2(torch.relu(r.bn1(r.fc1(gap)))))
        return {"branch_weights": a.reshape(n, r.radix, r.out).numpy()}
    if name == "pfa":
        y = torch.relu(r.bn(torch.cat([getattr(r, f"conv{i}")(x) for i in range(r.n)], 1)))
        a = torch.sigmoid(r.ca_fc2(torch.relu(r.ca_fc1(y.mean((2, 3), keepdim=True)))))
        return {"channel_weights": _nhwc(a)}
    if name == "stn":
        p = r.loc(x)
        theta = p.reshape(n, 2, 3)
        grid = tF.affine_grid(theta, (n, c, h, w), align_corners=False)
        return {"params": p.numpy(), "grid": grid.numpy(), "matrix": theta.numpy(),
                "sampled": _nhwc(r(x))}
    if name == "nl":
        t = r.theta(x).flatten(2).transpose(1, 2)
        f = (t @ r.phi(x).flatten(2) / r.inter ** 0.5).softmax(-1)
        return {"attention": f.numpy()}
    if name == "pam":
        q = r.query(x).flatten(2).transpose(1, 2)
        return {"attention": torch.bmm(q, r.key(x).flatten(2)).softmax(-1).numpy()}
    if name == "cam":
        q = x.flatten(2)
        e = torch.bmm(q, q.transpose(1, 2))
        return {"attention": (e.amax(-1, keepdim=True) - e).softmax(-1).numpy()}
    if name == "danet":
        return {"sa": _recompute("pam", r.sa, r.conv5a(x)),
                "sc": _recompute("cam", r.sc, r.conv5c(x))}
    if name == "cca":
        return {"attention": _cca_attention(r, x)}
    if name == "mhsa2d":
        t = x.flatten(2).transpose(1, 2)
        qkv = r.qkv(t).reshape(n, h * w, 3, r.num_heads, c // r.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return {"attention": ((q @ k.transpose(-1, -2)) * (c // r.num_heads) ** -0.5)
                .softmax(-1).numpy()}
    assert not EXPECTED[name], f"{name}: no recomputation written"
    return {}


@pytest.mark.parametrize("name", NAMES)
def test_sown_maps_equal_the_reference_recomputation(name):
    m, v = linen_case(name)
    _, maps = aj.intermediates(m, jnp.asarray(X), variables=v)
    maps = unwrap(maps)
    r = REFERENCES[name](C)
    load_into_torch(r, v)
    r.eval()
    with torch.no_grad():
        expected = _recompute(name, r, nhwc_to_nchw(X))
    assert shapes(expected) == EXPECTED[name]
    for (path, a), (path_e, e) in zip(leaves(maps), leaves(expected), strict=True):
        assert path == path_e
        assert_close(a, e, rtol=1e-5, atol_rel=1e-5, what=f"{name} {path}")


@pytest.mark.parametrize("name,path,axes", SOFTMAX, ids=[f"{n}-{'/'.join(p)}"
                                                         for n, p, _ in SOFTMAX])
def test_softmax_maps_sum_to_one(name, path, axes):
    m, v = linen_case(name)
    _, maps = aj.intermediates(m, jnp.asarray(X), variables=v)
    a = unwrap(maps)
    for key in path:
        a = a[key]
    a = np.asarray(a, np.float64)
    assert a.min() >= 0.0
    np.testing.assert_allclose(a.sum(axis=axes), 1.0, rtol=1e-5)


def test_criss_cross_masks_each_pixel_in_its_column():
    """Own position: weight exactly 0 in the column part, counted once through the row."""
    m, v = linen_case("cca")
    _, maps = aj.intermediates(m, jnp.asarray(X), variables=v)
    a = np.asarray(unwrap(maps)["attention"])  # (N, R, H, W, H + W)
    for i in range(H):
        assert np.all(a[:, :, i, :, i] == 0.0)
    assert np.all(a[:, :, :, :, H:] > 0.0)


# --- options and modules outside the registry ---------------------------------------------

XS = jnp.asarray(X)

# id -> (linen module, nnx module factory, kwargs of the call, expected maps)
EXTRA = {
    "ChannelGate": (lambda: L.ChannelGate(C), lambda r: N.ChannelGate(C, rngs=r),
                    {"channel_weights": (NB, 1, 1, C)}),
    "SpatialGate": (lambda: L.SpatialGate(C), lambda r: N.SpatialGate(C, rngs=r),
                    {"spatial_map": (NB, H, W, 1)}),
    "PyramidSpatialAttention": (lambda: L.PyramidSpatialAttention(C),
                                lambda r: N.PyramidSpatialAttention(C, rngs=r),
                                {"spatial_map": (NB, H, W, 1)}),
    "LocalisationNet": (lambda: L.LocalisationNet(C), lambda r: N.LocalisationNet(C, rngs=r),
                        {}),
    "ge_extent2": (lambda: L.GatherExcite(C, extent=2), lambda r: N.GatherExcite(
        C, extent=2, rngs=r), {"channel_weights": (NB, 3, 3, C)}),
    "ge_extent4_params": (lambda: L.GatherExcite(C, extent=4, extra_params=True),
                          lambda r: N.GatherExcite(C, extent=4, extra_params=True, rngs=r),
                          {"channel_weights": (NB, 2, 2, C)}),
    "gc_scale_and_add": (lambda: L.GlobalContext(C, fuse_scale=True),
                         lambda r: N.GlobalContext(C, fuse_scale=True, rngs=r),
                         {"context_weights": (NB, H, W, 1), "channel_weights": (NB, 1, 1, C),
                          "channel_add": (NB, 1, 1, C)}),
    "nl_dot_product_sub_sample": (
        lambda: L.NonLocal(C, mode="dot_product", sub_sample=True),
        lambda r: N.NonLocal(C, mode="dot_product", sub_sample=True, rngs=r),
        {"attention": (NB, T, (H // 2) * (W // 2))}),
    "nl_concatenation": (lambda: L.NonLocal(C, mode="concatenation"),
                         lambda r: N.NonLocal(C, mode="concatenation", rngs=r),
                         {"attention": (NB, T, T)}),
    "splat_radix1": (lambda: L.SplitAttention(C, radix=1), lambda r: N.SplitAttention(
        C, radix=1, rngs=r), {"branch_weights": (NB, 1, C)}),
    "sk_three_paths": (lambda: L.SelectiveKernel(C, num_paths=3), lambda r: N.SelectiveKernel(
        C, num_paths=3, rngs=r), {"branch_weights": (NB, 3, C)}),
    "pfa_no_ca": (lambda: L.ContextAwarePyramid(C, channel_attention=False),
                  lambda r: N.ContextAwarePyramid(C, channel_attention=False, rngs=r), {}),
    "stn_tps": (lambda: L.SpatialTransformer(C, transform="tps", out_size=(4, 3)),
                lambda r: N.SpatialTransformer(C, transform="tps", out_size=(4, 3), rngs=r),
                {"params": (NB, 18), "grid": (NB, 4, 3, 2), "control_points": (NB, 9, 2),
                 "sampled": (NB, 4, 3, C)}),
    "stn_perspective": (lambda: L.SpatialTransformer(C, transform="perspective"),
                        lambda r: N.SpatialTransformer(C, transform="perspective", rngs=r),
                        {"params": (NB, 8), "grid": (NB, H, W, 2), "matrix": (NB, 3, 3),
                         "sampled": (NB, H, W, C)}),
    "mhsa2d_relative": (
        lambda: L.MultiHeadSelfAttention2d(C, num_heads=4, position="relative",
                                           input_size=(H, W)),
        lambda r: N.MultiHeadSelfAttention2d(C, num_heads=4, position="relative",
                                             input_size=(H, W), rngs=r),
        {"attention": (NB, 4, T, T)}),
}


@pytest.mark.parametrize("case", EXTRA)
def test_options_and_unregistered_modules(case):
    make, make_nnx, expected = EXTRA[case]
    m = make()
    v = variables_for(m, XS)
    y, maps = aj.intermediates(m, XS, variables=v)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(m.apply(v, XS)))
    assert shapes(unwrap(maps)) == expected
    n = make_nnx(nnx.Rngs(0))
    aj.load_linen_variables(n, v)
    n.eval()
    yn, maps_n = aj.intermediates(n, XS)
    np.testing.assert_array_equal(np.asarray(yn), np.asarray(n(XS)))
    for (p, a), (pn, b) in zip(leaves(unwrap(maps)), leaves(unwrap(maps_n)), strict=True):
        assert p == pn
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)


def test_gather_excite_extent_map_is_the_gate_before_its_resize():
    """GE with extent 2: the sown (N, 3, 3, C) map is the reference's gate at the gathered
    size, and the output is x times its nearest resize (PyTorch's legacy "nearest")."""
    m = L.GatherExcite(C, extent=2, rd_channels=4)
    v = variables_for(m, XS)
    y, maps = aj.intermediates(m, XS, variables=v)
    w = np.asarray(unwrap(maps)["channel_weights"])
    r = RefGatherExcite(C, 4, extent=2)
    load_into_torch(r, v)
    xt = nhwc_to_nchw(X)
    with torch.no_grad():
        g = tF.avg_pool2d(xt, 3, stride=2, padding=1, count_include_pad=False)
        gate = torch.sigmoid(r.fc2(torch.relu(r.fc1(g))))
        up = tF.interpolate(gate, size=(H, W), mode="nearest")
    assert_close(w, _nhwc(gate), what="gate")
    assert_close(y, X * _nhwc(up), what="output")


def test_non_local_other_modes_match_the_reference():
    for mode, sub in (("dot_product", True), ("concatenation", False)):
        m = L.NonLocal(C, mode=mode, sub_sample=sub)
        v = variables_for(m, XS)
        _, maps = aj.intermediates(m, XS, variables=v)
        r = ref_sa.NonLocal(C, C // 2, mode=mode, sub_sample=sub)
        load_into_torch(r, v)
        r.eval()
        xt = nhwc_to_nchw(X)
        with torch.no_grad():
            t = r.theta(xt).flatten(2).transpose(1, 2)  # (N, T, Ci)
            p = r.phi(xt)
            if sub:
                p = tF.max_pool2d(p, 2)
            if mode == "dot_product":
                f = t @ p.flatten(2) / p.flatten(2).shape[-1]
            else:
                a = r.concat_project(torch.cat([r.theta(xt), torch.zeros_like(r.theta(xt))],
                                               1)).flatten(1)
                b = r.concat_project(torch.cat([torch.zeros_like(p), p], 1)).flatten(1)
                f = torch.relu(a[:, :, None] + b[:, None, :]) / b.shape[-1]
        assert_close(unwrap(maps)["attention"], f.numpy(), what=mode)


def test_spatial_gate_and_pyramid_spatial_map_match_the_references():
    sg = L.SpatialGate(C)
    v = variables_for(sg, XS)
    _, maps = aj.intermediates(sg, XS, variables=v)
    r = ref_hybrid.SpatialGate()
    load_into_torch(r, v)
    r.eval()
    xt = nhwc_to_nchw(X)
    with torch.no_grad():
        pooled = torch.cat([xt.mean(1, keepdim=True), xt.amax(1, keepdim=True)], 1)
        assert_close(unwrap(maps)["spatial_map"], _nhwc(torch.sigmoid(r.bn(r.conv(pooled)))))
    psa = L.PyramidSpatialAttention(C)
    v = variables_for(psa, XS)
    _, maps = aj.intermediates(psa, XS, variables=v)
    r = ref_saliency.PyramidSpatialAttention(C)
    load_into_torch(r, v)
    r.eval()
    with torch.no_grad():
        assert_close(unwrap(maps)["spatial_map"], _nhwc(r.attention_map(xt)))


def test_pyramid_feature_attention_sows_through_its_parts():
    low = jnp.asarray(np.random.default_rng(2).normal(size=(NB, 8, 8, 16)), jnp.float32)
    high = jnp.asarray(np.random.default_rng(3).normal(size=(NB, 4, 4, 32)), jnp.float32)
    m = L.PyramidFeatureAttention(16, 32)
    v = m.init(jax.random.key(0), low, high)
    y, maps = aj.intermediates(m, low, high, variables=v)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(m.apply(v, low, high)))
    # CPFE's channel attention gates its 4 concatenated branches of ``features`` (32) each.
    assert shapes(unwrap(maps)) == {"cpfe": {"channel_weights": (NB, 1, 1, 4 * 32)},
                                    "sa": {"spatial_map": (NB, 8, 8, 1)}}
    n = N.PyramidFeatureAttention(16, 32, rngs=nnx.Rngs(0))
    aj.load_linen_variables(n, v)
    n.eval()
    _, maps_n = aj.intermediates(n, low, high)
    assert shapes(unwrap(maps_n)) == shapes(unwrap(maps))


def test_spatial_transformer_return_transform_with_collection():
    """``return_transform`` still returns the transform (without the sampled image) while the
    maps are collected; the sown transform is the returned one."""
    m, v = linen_case("stn")
    (y, aux), maps = aj.intermediates(m, XS, variables=v, return_transform=True)
    assert set(aux) == {"params", "grid", "matrix"}
    maps = unwrap(maps)
    for k in aux:
        np.testing.assert_array_equal(np.asarray(maps[k]), np.asarray(aux[k]))
    np.testing.assert_array_equal(np.asarray(maps["sampled"]), np.asarray(y))
    y2, aux2 = m.apply(v, XS, return_transform=True)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))


def test_every_public_module_is_covered():
    """Each public linen class is registered or listed here, so a new module gets a test."""
    registered = {aj.get_attention_class(n).__name__ for n in NAMES}
    extra = {"ChannelGate", "SpatialGate", "PyramidSpatialAttention", "LocalisationNet",
             "PyramidFeatureAttention"}
    public = {n for n in L.__all__ if inspect.isclass(getattr(L, n))}
    assert public == registered | extra, public ^ (registered | extra)


# --- the helper and the recipes ---------------------------------------------------------------


def test_intermediates_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(aj.intermediates, "intermediates", globs={})
    assert tests and tests[0].examples
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_intermediates_under_jit_and_both_recipes():
    m, v = linen_case("cbam")
    y, maps = jax.jit(lambda v, x: aj.intermediates(m, x, variables=v))(v, XS)
    # Under jit, collecting leaves the output bit for bit; eagerly (op by op) XLA fuses
    # differently, so the eager call agrees to rounding.
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(m.apply)(v, XS)))
    y2, state = m.apply(v, XS, mutable=["intermediates"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(y2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(maps["spatial_map"][0]),
                               np.asarray(state["intermediates"]["spatial_map"][0]),
                               rtol=1e-6, atol=1e-7)
    n = nnx_twin("cbam", v)
    yn, st = nnx.jit(lambda n, x: nnx.capture(n, nnx.Intermediate)(x))(n, XS)
    np.testing.assert_allclose(np.asarray(yn), np.asarray(y), rtol=1e-6, atol=1e-6)
    assert shapes(unwrap(nnx.to_pure_dict(st))) == EXPECTED["cbam"]


def test_maps_inside_a_model_are_found_by_path():
    """A mechanism inside a network sows under its path (nested dicts), both APIs."""

    class LinenNet(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = L.SqueezeExcite(C, name="se")(x)
            return L.CBAM(C, name="cbam")(x)

    class NnxNet(nnx.Module):
        def __init__(self, rngs):
            self.se = N.SqueezeExcite(C, rngs=rngs)
            self.cbam = N.CBAM(C, rngs=rngs)

        def __call__(self, x):
            return self.cbam(self.se(x))

    net = LinenNet()
    v = net.init(jax.random.key(0), XS)
    _, maps = aj.intermediates(net, XS, variables=v)
    expect = {"se": EXPECTED["se"], "cbam": EXPECTED["cbam"]}
    assert shapes(unwrap(maps)) == expect
    _, maps_n = aj.intermediates(NnxNet(nnx.Rngs(0)), XS)
    assert shapes(unwrap(maps_n)) == expect


def test_intermediates_bad_arguments():
    m = L.SqueezeExcite(C)
    v = m.init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=r"intermediates: variables must be the linen model's"):
        aj.intermediates(m, XS)
    with pytest.raises(ValueError, match=r"intermediates: mutable must be not given"):
        aj.intermediates(m, XS, variables=v, mutable=["batch_stats"])
    with pytest.raises(ValueError, match=r"intermediates: variables must be None for an nnx"):
        aj.intermediates(N.SqueezeExcite(C, rngs=nnx.Rngs(0)), XS, variables=v)
    with pytest.raises(ValueError, match=r"intermediates: model must be a flax.linen or "
                                         r"flax.nnx Module, got function"):
        aj.intermediates(lambda x: x, XS)


# --- documentation ------------------------------------------------------------------------

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def _documented_table():
    """Registry name -> set of map names, from CONTRIBUTING.md's table of sown maps."""
    text = CONTRIBUTING.read_text()
    section = text.split("## Attention maps", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[a-z0-9]+`", cells[0]):
            names = set(re.findall(r"`([a-z_/]+)`", cells[2]))
            table[cells[0].strip("`")] = names
    return table


def test_contributing_lists_every_map():
    table = _documented_table()
    for name in NAMES:
        want = {"/".join(p) for p, _ in leaves(EXPECTED[name])}
        assert table.get(name, set()) == want, (name, table.get(name), want)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_module_docstring_names_its_maps(name, api):
    doc = inspect.getdoc(aj.get_attention_class(name, api=api)) or ""
    for path, _ in leaves(EXPECTED[name]):
        assert f"``{path[-1]}``" in doc, (name, api, path)
    assert "intermediates" in doc or not EXPECTED[name], (name, api)


# --- models: the ST classifiers sow their transformer's maps, the zoo finds them by path ------

ST_CASES = [("STCNN", {}), ("STCNN", {"transform": "tps", "localisation": "pooled"}),
            ("STFCN", {"transform": "perspective"})]


@pytest.mark.parametrize("name,kw", ST_CASES, ids=[f"{n}-{kw.get('transform', 'affine')}"
                                                    for n, kw in ST_CASES])
def test_st_classifiers_sow_their_transform(name, kw):
    """ST-CNN and ST-FCN sow what their spatial transformer computes (the transform ``rectify``
    returns, and its output as ``sampled``) without changing their logits; nnx's equal linen's
    on one parameter tree. Away from the identity start, so the maps are not trivial."""
    from attention_jax.models import cnn, cnn_nnx
    from attention_jax.models.classifier_core import identity_bias

    x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 28, 28, 1)), jnp.float32)
    m = getattr(cnn, name)(**kw)
    v = variables_for(m, x)
    y, maps = aj.intermediates(m, x, variables=v)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(m.apply(v, x)))
    maps = unwrap(maps)
    seen, aux = m.apply(v, x, return_transform=True, method="rectify")
    assert set(maps) == {*aux, "sampled"}
    assert not np.allclose(np.asarray(aux["params"]),
                           np.asarray(identity_bias(m.transform, m.tps_grid_size)))
    for k in aux:
        np.testing.assert_allclose(np.asarray(maps[k]), np.asarray(aux[k]), rtol=1e-6,
                                   atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.asarray(maps["sampled"]), np.asarray(seen), rtol=1e-6,
                               atol=1e-6)

    n = getattr(cnn_nnx, name)(**kw, rngs=nnx.Rngs(0))
    aj.load_linen_variables(n, v)
    yn, maps_n = aj.intermediates(n, x)
    np.testing.assert_array_equal(np.asarray(yn), np.asarray(n(x)))
    assert not jax.tree.leaves(nnx.state(n, nnx.Intermediate))
    for (p, a), (pn, b) in zip(leaves(maps), leaves(unwrap(maps_n)), strict=True):
        assert p == pn
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5,
                                   err_msg=str(p))


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_zoo_resnet_maps_are_found_by_path(api):
    """A zoo ResNet with an attention mechanism: each block's mechanism sows under its path
    (``layer<i>_<j>/attn``), the logits unchanged; the default call builds no map."""
    from attention_jax.models import zoo

    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 28, 28, 1)), jnp.float32)
    if api == "linen":
        m = zoo.create_model("resnet", num_classes=10, attention="cbam")
        v = m.init(jax.random.key(0), x)
        y, maps = aj.intermediates(m, x, variables=v)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(m.apply(v, x)))
        j_plain = jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x)
        j_collect = jax.make_jaxpr(
            lambda v, x: m.apply(v, x, mutable=["intermediates"]))(v, x)
    else:
        m = zoo.create_model("resnet", num_classes=10, attention="cbam", api="nnx",
                             rngs=nnx.Rngs(0))
        m.eval()
        y, maps = aj.intermediates(m, x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(m(x)))
        graph, state = nnx.split(m)
        j_plain = jax.make_jaxpr(lambda s, x: nnx.merge(graph, s)(x))(state, x)
        j_collect = jax.make_jaxpr(
            lambda s, x: nnx.capture(nnx.merge(graph, s), nnx.Intermediate)(x))(state, x)
    maps = unwrap(maps)
    assert set(maps) == {"layer1_0", "layer2_0", "layer3_0"}
    for block, c, hw in zip(sorted(maps), (16, 32, 64), (28, 14, 7), strict=True):
        assert shapes(maps[block]) == {"attn": {"channel_weights": (2, 1, 1, c),
                                                "spatial_map": (2, hw, hw, 1)}}
    assert _dce_equal(j_plain, j_collect)
    assert len(j_collect.jaxpr.outvars) == len(j_plain.jaxpr.outvars) + 6


def test_viz_draws_the_sown_maps():
    """The sown maps go to ``attention_jax.viz`` as they are, one batch entry at a time: a
    spatial map over the image, channel weights as bars, one query's non-local row, one head of
    multi-head attention, and STN inputs over their sampled outputs with the grids' outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attention_jax import viz

    def collect(name):
        m, v = linen_case(name)
        return unwrap(aj.intermediates(m, XS, variables=v)[1])

    image = X[0, ..., 0]
    cbam = collect("cbam")
    ax = viz.overlay(image, cbam["spatial_map"][0])
    np.testing.assert_allclose(np.asarray(ax.images[1].get_array()),
                               np.asarray(cbam["spatial_map"][0, ..., 0]), rtol=1e-6)
    ax = viz.channel_weights(cbam["channel_weights"][0])
    np.testing.assert_allclose([p.get_height() for p in ax.patches],
                               np.asarray(cbam["channel_weights"][0]).ravel(), rtol=1e-6)
    query = (2, 3)
    for name, a in (("nl", collect("nl")["attention"][0]),
                    ("mhsa2d", collect("mhsa2d")["attention"][0, 1])):
        ax = viz.query_attention(image, a, query, map_size=(H, W))
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()),
                                   np.asarray(a[query[0] * W + query[1]]).reshape(H, W),
                                   rtol=1e-6, err_msg=name)
    stn = collect("stn")
    fig = viz.stn_grid(X[..., 0], stn["sampled"][..., 0], grids=stn["grid"])
    axes = np.asarray(fig.axes).reshape(2, NB)
    for i in range(NB):
        np.testing.assert_allclose(np.asarray(axes[1, i].images[0].get_array()),
                                   np.asarray(stn["sampled"][i, ..., 0]), rtol=1e-6)
        assert axes[0, i].lines
    plt.close("all")
