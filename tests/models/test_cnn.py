"""The STN experiment's classifiers (FCN, CNN, ST-FCN, ST-CNN with affine / projective / TPS
transformers): parity with PyTorch, linen == nnx, identity start, shapes, parameter counts,
the localisation labels, bad input."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as tF
from flax import nnx
from torch import nn as tnn

from attention_jax import functional as F
from attention_jax import load_linen_variables
from attention_jax.models import CNN, FCN, STCNN, STFCN, cnn_nnx, localisation_labels
from attention_jax.torch_reference.spatial import SpatialTransformer as TorchSpatialTransformer
from tests.parity import check_module_parity

# ------------------------------------------------------------------------------------------
# PyTorch references, written from the docstrings (NCHW; flattening in NHWC order as JAX)
# ------------------------------------------------------------------------------------------


def _flat(h: torch.Tensor) -> torch.Tensor:
    return h.permute(0, 2, 3, 1).flatten(1)


class TorchFCN(tnn.Module):
    def __init__(self, d_in, hidden=(128, 64), classes=10):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(d_in, hidden[0]), tnn.Linear(hidden[0], hidden[1])
        self.head = tnn.Linear(hidden[1], classes)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(_flat(x))))))


class TorchCNN(tnn.Module):
    def __init__(self, size, features=(16, 32), k=3, hidden=64, classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, features[0], k, padding=k // 2)
        self.conv2 = tnn.Conv2d(features[0], features[1], k, padding=k // 2)
        self.fc = tnn.Linear((size // 4) ** 2 * features[1], hidden)
        self.head = tnn.Linear(hidden, classes)

    def forward(self, x):
        h = tF.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = tF.max_pool2d(torch.relu(self.conv2(h)), 2)
        return self.head(torch.relu(self.fc(_flat(h))))


class TorchConvLoc(tnn.Module):
    def __init__(self, size, p, features=(20, 20), k=5, hidden=32):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, features[0], k, padding=k // 2)
        self.conv2 = tnn.Conv2d(features[0], features[1], k, padding=k // 2)
        self.fc1 = tnn.Linear((size // 4) ** 2 * features[1], hidden)
        self.fc2 = tnn.Linear(hidden, p)

    def forward(self, x):
        h = tF.max_pool2d(torch.relu(self.conv1(tF.max_pool2d(x, 2))), 2)
        return self.fc2(torch.relu(self.fc1(_flat(torch.relu(self.conv2(h))))))


class TorchFCLoc(tnn.Module):
    def __init__(self, d_in, p, hidden=32):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(d_in, hidden), tnn.Linear(hidden, p)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(_flat(x))))


class TorchST(TorchSpatialTransformer):
    """The reference spatial transformer (grids, sampler) with our localisation net and a
    classifier after it: submodules ``loc`` and ``cnn`` / ``fcn`` as the JAX trees."""

    def __init__(self, kind, size, transform, out):
        super().__init__(1, transform=transform, out_size=(out, out), tps_grid_size=(4, 4))
        p = 32 if transform == "tps" else {"affine": 6, "perspective": 8}[transform]
        if kind == "cnn":
            self.loc, self.cnn = TorchConvLoc(size, p), TorchCNN(out)
        else:
            self.loc, self.fcn = TorchFCLoc(size * size, p), TorchFCN(out * out)
        self.kind = kind

    def forward(self, x):
        return getattr(self, self.kind)(super().forward(x))


def _perturb_loc(variables, key, scale=0.05):
    """A non-identity transform: the zero-initialised last localisation kernel made random."""
    params = jax.tree.map(lambda a: a, variables["params"])
    k = params["loc"]["fc2"]["kernel"]
    params["loc"]["fc2"] = {**params["loc"]["fc2"],
                            "kernel": scale * jax.random.normal(key, k.shape)}
    return {**variables, "params": params}


@pytest.fixture(scope="module")
def x42():
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (2, 42, 42, 1)))


def _logits(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def test_fcn_and_cnn_match_pytorch(x42):
    x28 = x42[:, 7:35, 7:35]
    check = partial(check_module_parity, output_to_torch_layout=_logits)
    check(FCN(), TorchFCN(784), x28)
    check(CNN(), TorchCNN(28), x28)
    check(CNN(features=(8, 12), kernel_size=5, hidden=16), TorchCNN(42, (8, 12), 5, 16), x42)


@pytest.mark.parametrize("kind, transform", [("cnn", "affine"), ("cnn", "perspective"),
                                             ("cnn", "tps"), ("fcn", "affine")])
def test_st_models_match_pytorch_away_from_the_identity(x42, kind, transform):
    cls = STCNN if kind == "cnn" else STFCN
    model = cls(transform=transform, out_size=(28, 28))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.asarray(x42))
    variables = _perturb_loc(variables, jax.random.PRNGKey(2))
    theta = model.apply(variables, jnp.asarray(x42), method=lambda m, x: m.loc(x))
    ident = F.identity_transform_params(transform, tps_grid_size=(4, 4))
    assert float(jnp.abs(theta - ident).max()) > 0.02  # really away from the identity
    check_module_parity(model, TorchST(kind, 42, transform, 28), x42, variables=variables,
                        rtol=1e-4, atol_rel=1e-4, output_to_torch_layout=_logits)


_LINEN_NNX = [
    ("FCN", {}, {}),
    ("CNN", {"features": (8, 12), "kernel_size": 5, "hidden": 24}, {}),
    ("STCNN", {"transform": "affine", "out_size": (28, 28)}, {}),
    ("STCNN", {"transform": "perspective", "out_size": (28, 28)}, {}),
    ("STCNN", {"transform": "tps"}, {}),
    ("STCNN", {"transform": "affine", "localisation": "pooled", "loc_features": (8, 16)}, {}),
    ("STFCN", {"transform": "affine", "out_size": (20, 20)}, {}),
]


@pytest.mark.parametrize("name, kw, _", _LINEN_NNX, ids=[f"{n}-{i}" for i, (n, *_) in
                                                            enumerate(_LINEN_NNX)])
def test_linen_equals_nnx_on_one_parameter_tree(x42, name, kw, _):
    x = jnp.asarray(x42)
    linen = getattr(__import__("attention_jax.models", fromlist=[name]), name)(**kw)
    variables = jax.jit(linen.init)(jax.random.PRNGKey(3), x)
    if "loc" in variables["params"]:
        variables = _perturb_loc(variables, jax.random.PRNGKey(4))
    model = getattr(cnn_nnx, name)(**kw, in_size=(42, 42), rngs=nnx.Rngs(0))
    # Same tree, same shapes, same count; then the same outputs from the same parameters.
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, variables["params"])
    load_linen_variables(model, variables)
    np.testing.assert_allclose(model(x), linen.apply(variables, x), rtol=1e-6, atol=1e-6)
    if "loc" in variables["params"]:
        np.testing.assert_allclose(model.rectify(x), linen.apply(variables, x,
                                   method=linen.rectify), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("transform", ["affine", "perspective", "tps"])
@pytest.mark.parametrize("cls", [STCNN, STFCN, partial(STCNN, localisation="pooled")],
                         ids=["stcnn", "stfcn", "stcnn-pooled"])
def test_identity_start_is_the_identity_warp(x42, cls, transform):
    x = jnp.asarray(x42)
    model = cls(transform=transform)
    variables = jax.jit(model.init)(jax.random.PRNGKey(5), x)
    out, aux = jax.jit(partial(model.apply, method="rectify", return_transform=True))(
        variables, x)
    # The transformer passes the image through (to float32 rounding of the pixel positions:
    # (x + 1) * W / 2 - 0.5 is ~4e-6 from an integer for W = 42).
    np.testing.assert_allclose(out, x, atol=1e-5)
    ident = F.identity_transform_params(transform, tps_grid_size=(4, 4))
    np.testing.assert_allclose(aux["params"], np.broadcast_to(ident, aux["params"].shape),
                               atol=1e-7)
    # ...and the localisation net gets gradients (it can learn to move the digit).
    grads = jax.grad(lambda v: model.apply(v, x).sum())(variables)
    assert float(jnp.abs(grads["params"]["loc"]["fc2"]["kernel"]).sum()) > 0


def test_identity_start_with_a_smaller_output_samples_the_whole_input(x42):
    x = jnp.asarray(x42)
    model = STCNN(out_size=(28, 28))
    variables = jax.jit(model.init)(jax.random.PRNGKey(5), x)
    out = jax.jit(partial(model.apply, method="rectify"))(variables, x)
    theta = jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3))
    want = F.grid_sample(x, F.affine_grid(theta, (2, 28, 28, 1)))
    np.testing.assert_allclose(out, want, atol=1e-6)


def _count(model, size):
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))


def test_parameter_counts():
    # FCN 784-128-64-10; CNN 3x3 convs 1->16->32, 7x7x32 -> 64 -> 10 (28x28 input).
    assert _count(FCN(), 28) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10 == 109_386
    cnn28 = 9 * 16 + 16 + 9 * 16 * 32 + 32 + 7 * 7 * 32 * 64 + 64 + 64 * 10 + 10
    assert _count(CNN(), 28) == cnn28 == 105_866
    cnn42 = cnn28 + (10 * 10 - 7 * 7) * 32 * 64  # 42 -> 21 -> 10
    assert _count(CNN(), 42) == cnn42
    # The ST-CNN's localisation net: pool, 5x5 conv 1->20, pool, 5x5 conv 20->20, flatten
    # (42 -> 21 -> 10: 10x10x20), 32 hidden, P outputs; then the CNN on its 28x28 output.
    for transform, p in (("affine", 6), ("perspective", 8), ("tps", 32)):
        loc = 25 * 20 + 20 + 25 * 20 * 20 + 20 + 10 * 10 * 20 * 32 + 32 + 32 * p + p
        assert _count(STCNN(transform=transform, out_size=(28, 28)), 42) == loc + cnn28
    assert _count(STFCN(out_size=(28, 28)), 42) == 42 * 42 * 32 + 32 + 33 * 6 + 109_386
    for name in ("FCN", "CNN", "STCNN", "STFCN"):
        nnx_model = getattr(cnn_nnx, name)(in_size=(42, 42), rngs=nnx.Rngs(0))
        n = sum(int(a.size) for a in jax.tree.leaves(nnx.state(nnx_model, nnx.Param)))
        linen = getattr(__import__("attention_jax.models", fromlist=[name]), name)()
        assert n == _count(linen, 42), name


def test_localisation_labels_split_linen_and_nnx_trees():
    linen = STCNN(transform="tps")
    params = jax.jit(linen.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    labels = localisation_labels(params)
    assert set(jax.tree.leaves(labels["loc"])) == {"localisation"}
    assert set(jax.tree.leaves(labels["cnn"])) == {"classifier"}
    state = nnx.state(cnn_nnx.STCNN(transform="tps", rngs=nnx.Rngs(0)), nnx.Param)
    nnx_labels = localisation_labels(state)
    assert sorted(jax.tree.leaves(nnx_labels)) == sorted(jax.tree.leaves(labels))
    assert set(jax.tree.leaves(localisation_labels(
        CNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))))) == {"classifier"}
    # With Adam, the first update moves every parameter by about its learning rate: the
    # localisation net's by a tenth of the classifier's here.
    tx = optax.multi_transform({"classifier": optax.adam(1e-2),
                                "localisation": optax.adam(1e-3)}, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["loc"]["fc1"]["kernel"], -1e-3, rtol=1e-4)
    np.testing.assert_allclose(updates["cnn"]["fc"]["kernel"], -1e-2, rtol=1e-4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: STCNN(transform="twist").init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
         "STCNN: transform must be one of 'affine', 'similarity', 'translation', 'perspective',"
         " 'tps', got 'twist'"),
        (lambda: STFCN(channels=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
         r"STFCN: x must be 3 channels"),
        (lambda: FCN().init(jax.random.PRNGKey(0), jnp.zeros((28, 28, 1))),
         r"FCN: x must be rank 4 \(N, H, W, C\)"),
        (lambda: CNN(num_classes=0).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
         "CNN: num_classes must be an integer >= 1, got 0"),
        (lambda: cnn_nnx.CNN(in_size=(28,), rngs=nnx.Rngs(0)),
         r"CNN: in_size must be a pair \(H, W\), got \(28,\)"),
        (lambda: cnn_nnx.STCNN(localisation="x", rngs=nnx.Rngs(0)),
         "STCNN: localisation must be one of 'flat', 'pooled', got 'x'"),
        (lambda: cnn_nnx.STFCN(transform="x", rngs=nnx.Rngs(0)),
         "STFCN: transform must be one of"),
    ],
    ids=["transform", "channels", "rank", "classes", "nnx-in-size", "nnx-localisation",
         "nnx-transform"],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
