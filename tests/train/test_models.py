"""The models ``attention-jax train`` builds by name: shapes, identity start, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models.cnn import CNN, STCNN
from attention_jax.train import create_model, list_models


def test_cnn_and_stcnn_shapes_and_identity_start():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 42, 42, 1))
    # Everything jitted: eager dispatch compiles op by op, slow on a small CPU; and init keys
    # of the rbg kind, whose init XLA:CPU compiles ~3x faster than threefry's.
    key = jax.random.key(1, impl="rbg")
    cnn = CNN(num_classes=7)
    variables = jax.jit(cnn.init)(key, x)
    assert jax.jit(cnn.apply)(variables, x).shape == (2, 7)
    st = STCNN(num_classes=7)
    variables = jax.jit(st.init)(key, x)

    @jax.jit
    def run(v):
        return st.apply(v, x), st.apply(v, x, method=st.rectify), jax.grad(
            lambda v: st.apply(v, x).sum())(v)

    logits, rectified, grads = run(variables)
    assert logits.shape == (2, 7)
    # The transformer starts at the identity: its output is its input...
    np.testing.assert_allclose(rectified, x, atol=1e-5)
    # ...and the localisation net gets gradients (it can learn to move the digit).
    assert float(jnp.abs(grads["params"]["loc"]["fc2"]["kernel"]).sum()) > 0


def test_create_model_by_name():
    # The trainer builds every zoo name (attention_jax.models.create_model).
    assert {"cnn", "resnet", "stcnn", "seresnet50", "resnest50d"} <= set(list_models())
    x = jnp.zeros((2, 28, 28, 1))
    model = create_model("resnet", num_classes=10, attention="se", small_stem=False)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    assert jax.jit(model.apply)(variables, x).shape == (2, 10)
    assert "batch_stats" in variables


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: create_model("vgg", num_classes=10),
         "create_model: name must be one of 'cnn', .*'stcnn', got 'vgg'"),
        (lambda: create_model("stcnn", num_classes=10, attention="se"),
         "create_model: attention must be None for model 'stcnn'"),
        (lambda: create_model("resnet", num_classes=10, api="nnx"),
         "create_model: rngs must be given for api='nnx'"),
        (lambda: create_model("resnet", num_classes=10, api="haiku"),
         "create_model: api must be one of 'linen', 'nnx', got 'haiku'"),
        (lambda: STCNN(localisation="x").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))),
         "STCNN: localisation must be one of 'flat', 'pooled', got 'x'"),
        (lambda: STCNN(channels=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))),
         r"STCNN: x must be 3 channels"),
    ],
    ids=["name", "attention", "nnx-no-rngs", "api", "localisation", "channels"],
)
def test_bad_model_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
