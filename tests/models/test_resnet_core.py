"""The API-neutral ResNet (models/resnet_core.py): its pools against torch's, its plans, the
train mode of the new options (linen == nnx), and the layering of the model files."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from attention_jax import load_linen_variables
from attention_jax.models import resnet as RL
from attention_jax.models import resnet_core as core
from attention_jax.models import resnet_nnx as RN
from tests.parity import nchw_to_nhwc, nhwc_to_nchw

MODELS = pathlib.Path(core.__file__).parent


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_avg_down_pool_is_torchs_ceil_mode_pool(hw, stride):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    cot = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)
    y, vjp = jax.vjp(lambda a: core.avg_down_pool(a, stride), jnp.asarray(x))
    xt = nhwc_to_nchw(x).requires_grad_(True)
    yt = torch.nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)(xt)
    np.testing.assert_allclose(y, nchw_to_nhwc(yt), rtol=1e-6, atol=1e-6)
    (yt * nhwc_to_nchw(cot[:, :y.shape[1], :y.shape[2]])).sum().backward()
    np.testing.assert_allclose(vjp(jnp.asarray(cot[:, :y.shape[1], :y.shape[2]]))[0],
                               nchw_to_nhwc(xt.grad), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (2, 3)])
def test_max_pool_is_torchs(hw):
    x = np.random.default_rng(2).normal(size=(2, *hw, 4)).astype(np.float32)
    y, vjp = jax.vjp(core.max_pool_3x3_s2, jnp.asarray(x))
    xt = nhwc_to_nchw(x).requires_grad_(True)
    yt = torch.nn.MaxPool2d(3, 2, 1)(xt)
    np.testing.assert_array_equal(y, nchw_to_nhwc(yt))
    cot = np.random.default_rng(3).normal(size=y.shape).astype(np.float32)
    (yt * nhwc_to_nchw(cot)).sum().backward()
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0], nchw_to_nhwc(xt.grad), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_pools_low_precision_large_values_finite(dtype):
    # Finite in float16, but a sum of four overflows it: the pools accumulate in float32.
    x = jnp.asarray(np.random.default_rng(4).uniform(3e4, 6e4, size=(1, 5, 5, 2))).astype(dtype)
    for y in (core.avg_down_pool(x, 2), core.max_pool_3x3_s2(x)):
        assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))


def test_plans_list_timms_layers():
    """Deep stem, avg-down shortcut, avd, mid attention: which layers a plan declares."""
    p = core.resnet_plan(layers=(1, 1), widths=(8, 16), block="bottleneck", stem_type="tiered",
                         stem_width=16, stem_pool=False, spatial_conv="splat", avd=True,
                         avg_down=True, attention="gc", attention_position="mid")
    assert [n for n, _ in p.stem_layers] == ["stem_conv1", "stem_bn1", "stem_conv2",
                                             "stem_bn2", "conv1", "bn1"]
    assert [s.stride for _, s in p.stem_layers[::2]] == [2, 1, 2]  # no pool: last conv strides
    assert [s.out_channels for _, s in p.stem_layers[::2]] == [12, 16, 32]
    (n1, b1), (n2, b2) = p.blocks
    assert (n1, n2) == ("layer1_0", "layer2_0") and b2.stride == 2 and b2.shortcut == "avg"
    layers = dict(b2.layers)
    assert list(layers) == ["conv1", "bn1", "conv2", "attn", "conv3", "bn3", "downsample_conv",
                            "downsample_bn"]
    assert layers["conv2"] == core.Spatial("splat", 16, 16, 1, layers["conv2"].options)
    assert layers["attn"].channels == 16  # mid: the block's inner width
    assert layers["downsample_conv"].stride == 1  # the avg pool strides
    assert p.num_features == 64 and p.head_layers == (("fc", core.Dense(64, 1000)),)


def test_train_mode_of_the_new_options_linen_equals_nnx():
    """Batch statistics through a deep stem, avg-down, splat with avd and mid GC: linen and nnx
    give the same output and the same updated statistics."""
    kw = {"layers": (1, 1), "widths": (8, 8), "block": "bottleneck", "stem_type": "deep",
          "stem_width": 8, "avg_down": True, "spatial_conv": "splat", "avd": True,
          "attention": "gc", "attention_position": "mid", "num_classes": 5,
          "attention_kwargs": {"eps": 1e-6, "attn_bias": True}}
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 23, 18, 3)), jnp.float32)
    m = RL.ResNet(**kw)
    v = m.init(jax.random.key(0), x)
    y, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    n = RN.ResNet(**kw, rngs=nnx.Rngs(0))
    load_linen_variables(n, v)
    n.train()
    np.testing.assert_allclose(n(x), y, rtol=1e-5, atol=1e-5)
    got = nnx.to_pure_dict(nnx.state(n, nnx.BatchStat))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got,
                 dict(upd["batch_stats"]))
    assert not np.allclose(upd["batch_stats"]["stem_bn1"]["mean"],
                           v["batch_stats"]["stem_bn1"]["mean"])


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_linen_and_nnx_models_do_not_import_each_other():
    linen, nnx_ = _imports(MODELS / "resnet.py"), _imports(MODELS / "resnet_nnx.py")
    assert not any(n.startswith(("attention_jax.models.resnet_nnx", "flax.nnx",
                                 "attention_jax.nnx")) for n in linen), linen
    assert not any(n.startswith(("attention_jax.models.resnet.", "flax.linen",
                                 "attention_jax.linen")) or n == "attention_jax.models.resnet"
                   for n in nnx_), nnx_
    core_imports = _imports(MODELS / "resnet_core.py")
    assert not any(n.startswith(("flax.linen", "flax.nnx", "attention_jax.linen",
                                 "attention_jax.nnx", "attention_jax.models.resnet"))
                   for n in core_imports), core_imports
