"""ResNet backbones: parameter counts against torchvision/timm, parity with a PyTorch reference
(forward and gradients), linen == nnx, train mode, bad input, low precision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax import functional as F
from attention_jax import load_linen_variables
from attention_jax.models import resnet as RL
from attention_jax.models import resnet_nnx as RN
from attention_jax.torch_reference import resnet as RT
from attention_jax.torch_reference.registry import REFERENCES
from tests.parity import check_linen_equals_nnx, check_module_parity

TORCHVISION = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
               "resnet101": 44_549_160}
"""``sum(p.numel() for p in torchvision.models.<name>().parameters())``."""
TIMM_SERESNET50 = 28_088_024
"""``timm.create_model("seresnet50")``: torchvision ResNet-50 + SE (rd 1/16, divisor 8, bias)."""


def count(model, hw: int = 64, channels: int = 3) -> int:
    """Parameter count without allocating (jax.eval_shape); batch statistics excluded."""
    x = jax.ShapeDtypeStruct((1, hw, hw, channels), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_plain_counts_match_torchvision(name):
    n = count(getattr(RL, name)())
    print(f"{name}: {n:,} (torchvision {TORCHVISION[name]:,})")
    assert n == TORCHVISION[name]


def test_se_and_eca_resnet50_counts():
    se = count(RL.resnet50(attention="se"))
    eca = count(RL.resnet50(attention="eca"))
    # ECA adds one conv1d kernel (no bias) per block, adaptive k = eca_kernel_size(C):
    # stage outputs 256, 512, 1024, 2048 -> k = 5, 5, 5, 7 over 3, 4, 6, 3 blocks.
    ks = [F.eca_kernel_size(c) for c, n in ((256, 3), (512, 4), (1024, 6), (2048, 3))
          for _ in range(n)]
    expected_eca = TORCHVISION["resnet50"] + sum(ks)
    print(f"seresnet50: {se:,} (timm {TIMM_SERESNET50:,}); ecaresnet50 (plain stem, adaptive k):"
          f" {eca:,} (= {TORCHVISION['resnet50']:,} + {sum(ks)})")
    assert se == TIMM_SERESNET50
    assert expected_eca == 25_557_118 and eca == expected_eca
    print(f"sk-resnet50: {count(RL.resnet50(spatial_conv='sk')):,}; "
          f"resnest-style 50: {count(RL.resnet50(spatial_conv='splat')):,}")


def test_torch_reference_has_the_same_counts():
    import torch

    torch.manual_seed(0)
    for kw, want in (({}, TORCHVISION["resnet50"]),
                     ({"attn": REFERENCES["se"]}, TIMM_SERESNET50)):
        ref = RT.ResNet(layers=(3, 4, 6, 3), block="bottleneck", **kw)
        assert sum(p.numel() for p in ref.parameters()) == want


SMALL = [
    # (id, linen kwargs, torch attention name, input hw)
    ("basic-se-small-stem", {"layers": (1, 1), "widths": (8, 16), "stem_width": 8,
                             "small_stem": True, "attention": "se"}, 12),
    ("bottleneck-eca", {"layers": (1, 2), "widths": (4, 8), "stem_width": 8,
                        "block": "bottleneck", "attention": "eca"}, 24),
    ("bottleneck-sk-grouped", {"layers": (1, 1), "widths": (8, 8), "stem_width": 8,
                               "block": "bottleneck", "spatial_conv": "sk", "groups": 2,
                               "base_width": 32}, 20),
    ("basic-sk-se", {"layers": (1, 1), "widths": (8, 16), "stem_width": 8, "small_stem": True,
                     "spatial_conv": "sk", "attention": "se"}, 10),
    ("bottleneck-splat", {"layers": (1, 1), "widths": (4, 8), "stem_width": 8,
                          "block": "bottleneck", "spatial_conv": "splat", "small_stem": True},
     10),
]


def _torch_model(kw):
    tkw = {k: v for k, v in kw.items() if k != "attention"}
    attn = kw.get("attention")
    return RT.ResNet(num_classes=5, attn=REFERENCES[attn] if attn else None, **tkw)


@pytest.mark.parametrize("cfg", SMALL, ids=[c[0] for c in SMALL])
def test_small_resnet_parity_and_nnx(cfg):
    _, kw, hw = cfg
    x = np.random.default_rng(0).normal(size=(2, hw, hw, 3)).astype(np.float32)
    m = RL.ResNet(num_classes=5, **kw)
    v = check_module_parity(m, _torch_model(kw), x, rtol=1e-4, atol_rel=2e-5,
                            output_to_torch_layout=lambda t: t.detach().numpy())
    n = RN.ResNet(num_classes=5, **kw, rngs=nnx.Rngs(0))
    check_linen_equals_nnx(m, n, jnp.asarray(x), v, atol=1e-5)


def test_train_mode_linen_equals_nnx_and_updates_stats():
    m = RL.resnet_tiny(num_classes=10, in_channels=1, attention="se")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 28, 28, 1)), jnp.float32)
    v = m.init(jax.random.key(0), x)
    y, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["bn1"]["mean"], v["batch_stats"]["bn1"]["mean"])
    n = RN.resnet_tiny(num_classes=10, in_channels=1, attention="se", rngs=nnx.Rngs(0))
    load_linen_variables(n, v)
    n.train()
    np.testing.assert_allclose(np.asarray(n(x)), np.asarray(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(n.bn1.mean[...]),
                               np.asarray(upd["batch_stats"]["bn1"]["mean"]), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("attention", [None, *aj.list_attention()])
def test_tiny_layout_takes_every_registered_mechanism(attention):
    """The small-image layout H6 trains on 28x28 / 42x42 digits, with any registered mechanism
    (shapes traced with jax.eval_shape: nothing compiled, nothing allocated)."""
    m = RL.resnet_tiny(num_classes=10, in_channels=1, attention=attention)
    for hw in (28, 42):
        x = jax.ShapeDtypeStruct((2, hw, hw, 1), jnp.float32)
        v = jax.eval_shape(m.init, jax.random.key(0), x)
        y = jax.eval_shape(m.apply, v, x)
        assert y.shape == (2, 10) and y.dtype == jnp.float32


def test_tiny_layout_runs_on_digits():
    m = RL.resnet_tiny(num_classes=10, in_channels=1, attention="se")
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 28, 28, 1)), jnp.float32)
    v = m.init(jax.random.key(0), x)
    y = jax.jit(m.apply)(v, x)
    assert y.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_allclose(y, m.apply(v, x), rtol=1e-5, atol=1e-5)


def test_features_only_and_widths():
    m = RL.ResNet(layers=(1, 1, 1), widths=(16, 24, 40), stem_width=16, small_stem=True,
                  num_classes=None)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    assert jax.eval_shape(m.init_with_output, jax.random.key(0), x)[0].shape == (2, 40)
    b = RL.ResNet(layers=(1,), widths=(8,), block="bottleneck", num_classes=None,
                  stem_width=8)
    assert jax.eval_shape(b.init_with_output, jax.random.key(0), x)[0].shape == (2, 32)
    assert count(RL.resnet_tiny(num_classes=10)) == count(RL.resnet_tiny(num_classes=None)) + 650


def test_grad_jit_through_backbone():
    m = RL.resnet_tiny(num_classes=3, attention="sk")
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
    v = m.init(jax.random.key(0), x)

    @jax.jit
    def loss(p):
        out, _ = m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(out ** 2)

    g = jax.grad(loss)(v["params"])
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    assert sum(float(jnp.abs(a).sum()) > 0 for a in leaves) > len(leaves) // 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(dtype):
    m = RL.resnet_tiny(num_classes=10, in_channels=1, attention="se", dtype=dtype)
    x = (jnp.asarray(np.random.default_rng(3).normal(size=(2, 28, 28, 1))) * 1e4).astype(dtype)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))


def _init(m, c=3):
    return m.init(jax.random.key(0), jnp.ones((1, 16, 16, c)))


def test_bad_block():
    with pytest.raises(ValueError, match=r"ResNet: block must be one of 'basic', 'bottleneck', "
                                         r"got 'resnext'"):
        _init(RL.ResNet(block="resnext"))


def test_bad_layers_widths():
    with pytest.raises(ValueError, match=r"ResNet: layers must be one block count per stage"):
        RN.ResNet(layers=(1, 1), widths=(8, 16, 32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ResNet: layers must be an integer >= 1, got 0"):
        _init(RL.ResNet(layers=(1, 0), widths=(8, 16)))


def test_bad_groups_on_basic_block():
    with pytest.raises(ValueError, match=r"ResNet: groups/base_width must be 1/64 for the basic "
                                         r"block"):
        _init(RL.ResNet(groups=32, base_width=4))


def test_bad_spatial_conv():
    with pytest.raises(ValueError, match=r"ResNet: spatial_conv must be one of 'conv', "
                                         r"'sk', 'splat'"):
        _init(RL.resnet_tiny(spatial_conv="selective"))
    with pytest.raises(ValueError, match=r"ResNet: spatial_kwargs must be empty when "
                                         r"spatial_conv='conv'"):
        RN.resnet_tiny(spatial_kwargs={"radix": 2}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ResNetBlock: spatial_kwargs must be free of "
                                         r"channels/out_channels/stride"):
        RN.ResNetBlock(8, 8, spatial_conv="sk", spatial_kwargs={"stride": 2}, rngs=nnx.Rngs(0))


def test_bad_stem_and_block_options():
    with pytest.raises(ValueError, match=r"ResNet: stem_type must be one of 'plain', 'deep', "
                                         r"'tiered', got 'd'"):
        _init(RL.resnet18(stem_type="d"))
    with pytest.raises(ValueError, match=r"ResNet: small_stem must be False with stem_type other "
                                         r"than 'plain' or stem_pool=False"):
        RN.resnet_tiny(stem_type="deep", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ResNet: stem_pool must be True for stem_type='plain'"):
        _init(RL.resnet18(stem_pool=False))
    with pytest.raises(ValueError, match=r"ResNet: stem_width // 4 \* 3 \(tiered stem\) must be "
                                         r"an integer >= 1, got 0"):
        _init(RL.resnet18(stem_type="tiered", stem_width=2))
    with pytest.raises(ValueError, match=r"ResNet: attention_position must be one of 'last', "
                                         r"'mid', got 'first'"):
        RN.resnet18(attention="se", attention_position="first", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ResNetBlock: x must be 8 channels"):
        blk = RL.ResNetBlock(8, 8)
        blk.init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))


def test_bad_attention_name():
    with pytest.raises(ValueError, match=r"get_attention_class: name must be one of"):
        _init(RL.resnet_tiny(attention="squeeze"))


def test_bad_input_channels_and_classes():
    with pytest.raises(ValueError, match=r"ResNet: x must be 3 channels"):
        _init(RL.resnet_tiny(), c=1)
    with pytest.raises(ValueError, match=r"ResNet: num_classes must be an integer >= 1"):
        RN.resnet_tiny(num_classes=0, rngs=nnx.Rngs(0))


def test_splat_radix_not_dividing_block_width():
    with pytest.raises(ValueError, match=r"SplitAttention: channels must be divisible by "
                                         r"groups \* radix=3"):
        _init(RL.resnet_tiny(block="bottleneck", spatial_conv="splat",
                             spatial_kwargs={"radix": 3}))


def test_1x1_convs_are_matmuls_on_cpu_3x3_stay_xla():
    # A bottleneck ResNet's 1x1 convolutions (and the strided 1x1 shortcut) take the library's
    # convolution (a matmul over the pixels on the CPU; XLA:CPU differentiated them ~6x
    # slower); the stem and the 3x3s stay XLA's own, in linen and nnx alike.
    from attention_jax.functional.convolution import conv_general_dilated
    from attention_jax.models import resnet_core as core

    assert core.Conv(8, 8, 1, stride=2).conv_general_dilated is conv_general_dilated
    assert core.Conv(8, 8, 3, groups=4).conv_general_dilated is jax.lax.conv_general_dilated
    kw = {"layers": (1, 1), "widths": (4, 8), "stem_width": 8, "block": "bottleneck",
          "small_stem": True}
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    m = RL.ResNet(num_classes=5, **kw)
    v = jax.eval_shape(m.init, jax.random.key(0), x)
    linen_text = jax.jit(lambda v, x: m.apply(v, x)).lower(v, x).as_text()
    n = RN.ResNet(num_classes=5, **kw, rngs=nnx.Rngs(0))
    graph, state = nnx.split(n)
    nnx_text = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, x).as_text()
    for text in (linen_text, nnx_text):
        convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
        kernels = [line.split("tensor<")[2] for line in convs]  # (input, kernel) -> output
        assert kernels and not any(k.startswith("1x1x") for k in kernels), kernels
        assert text.count("stablehlo.dot_general") >= 6  # 2 blocks x 3 1x1s, a shortcut, fc
