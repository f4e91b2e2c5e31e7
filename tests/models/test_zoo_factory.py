"""create_model's contract beyond timm's names: the trainer's models keep their meaning, any
ResNet name takes a registered attention, both APIs, and clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.models import (
    CNN,
    LAYOUTS,
    STCNN,
    ResNet,
    create_model,
    model_info,
    resnet_nnx,
)


def train_create_model(name, *, num_classes, in_channels=1, attention=None, **overrides):
    """What attention_jax/train/models.py built for its three names (before the zoo)."""
    if name == "cnn":
        return CNN(num_classes=num_classes, **overrides)
    if name == "stcnn":
        return STCNN(num_classes=num_classes, channels=in_channels, **overrides)
    return ResNet(num_classes=num_classes, in_channels=in_channels, attention=attention,
                  **{**LAYOUTS["resnet_tiny"], **overrides})


def _shapes(model, x):
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda a: (a.shape, a.dtype), v)


@pytest.mark.parametrize("name, kw", [
    ("resnet", {"attention": "se"}),
    ("resnet", {"attention": "cbam", "small_stem": False}),
    ("resnet", {}),
    ("cnn", {}),
    ("stcnn", {}),
])
def test_trainer_models_keep_their_meaning(name, kw):
    """Same module, same parameters and same logits as the trainer's factory built."""
    ours = create_model(name, num_classes=10, in_channels=1, **kw)
    theirs = train_create_model(name, num_classes=10, in_channels=1, **kw)
    assert type(ours) is type(theirs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
    v = jax.jit(theirs.init)(jax.random.key(0), x)
    assert _shapes(ours, x) == jax.tree.map(lambda a: (a.shape, a.dtype), v)
    np.testing.assert_array_equal(jax.jit(ours.apply)(v, x), jax.jit(theirs.apply)(v, x))


def test_trainer_defaults():
    assert create_model("resnet", num_classes=3).in_channels == 1  # digits
    assert create_model("stcnn", num_classes=3, in_channels=3).channels == 3
    assert isinstance(create_model("cnn", num_classes=3, in_channels=3), CNN)  # infers channels
    assert create_model("seresnet50").in_channels == 3
    assert model_info("resnet").timm_layout is None and model_info("cnn").pretrained is None


def test_any_resnet_takes_a_registered_attention():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    base = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(
        jax.eval_shape(create_model("resnet50").init, jax.random.key(0), x)["params"]))
    for attention in ("cbam", "ca", "bam"):
        m = create_model("resnet50", attention=attention, num_classes=10)
        v = jax.eval_shape(m.init, jax.random.key(0), x)
        assert "attn" in v["params"]["layer3_5"]
        assert jax.eval_shape(m.apply, v, x).shape == (1, 10)
    # seresnet50 with ECA instead of SE: the attention is replaced, not added.
    m = create_model("seresnet50", attention="eca")
    v = jax.eval_shape(m.init, jax.random.key(0), x)
    assert set(v["params"]["layer1_0"]["attn"]) == {"conv"}
    assert sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(v["params"])) > base


def test_nnx_api():
    m = nnx.eval_shape(lambda: create_model("skresnet18", api="nnx", rngs=nnx.Rngs(0),
                                            num_classes=4))
    assert isinstance(m, resnet_nnx.ResNet) and m.fc.kernel.shape == (512, 4)
    m = create_model("resnet", api="nnx", rngs=nnx.Rngs(0), num_classes=4, attention="eca")
    assert m(jnp.ones((2, 16, 16, 1))).shape == (2, 4)
    assert isinstance(create_model("resnet18"), ResNet)
    assert isinstance(create_model("stcnn", num_classes=3), STCNN)


@pytest.mark.parametrize("name", ["cnn", "stcnn"])
def test_small_models_in_nnx_share_linen_parameter_tree(name):
    """The trainer's cnn/stcnn by name in nnx: the cnn_nnx class, the linen tree's shapes."""
    from attention_jax.models import cnn_nnx

    x = jnp.zeros((2, 32, 36, 3))
    m = nnx.eval_shape(lambda: create_model(name, api="nnx", rngs=nnx.Rngs(0), num_classes=5,
                                            in_channels=3, in_size=(32, 36)))
    assert isinstance(m, cnn_nnx.CNN if name == "cnn" else cnn_nnx.STCNN)
    linen = create_model(name, num_classes=5, in_channels=3)
    want = jax.tree.map(lambda a: a.shape, jax.eval_shape(linen.init, jax.random.key(0), x))
    got = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    assert got == want["params"]


def test_errors():
    with pytest.raises(ValueError, match=r"create_model: name must be one of 'cnn', "
                                         r"'ecaresnet101d', .*, got 'vgg'"):
        create_model("vgg")
    with pytest.raises(ValueError, match=r"create_model: api must be one of 'linen', 'nnx', got "
                                         r"'jax'"):
        create_model("resnet18", api="jax")
    with pytest.raises(ValueError, match=r"create_model: rngs must be given for api='nnx'"):
        create_model("resnet18", api="nnx")
    with pytest.raises(ValueError, match=r"create_model: attention must be None for model "
                                         r"'stcnn' \(models taking attention: ecaresnet101d"):
        create_model("stcnn", num_classes=10, attention="se")
    with pytest.raises(ValueError, match=r"model_info: name must be one of"):
        model_info("resnet152")
