"""The model zoo against timm itself (tests/timm_oracle.py): every name's architecture, weights
in and out, logits in eval mode, linen == nnx; gradients on one model per mechanism family.

Full architectures at a small input (2 x 72 x 56: odd feature maps from the second stage on, so
the ceil-mode avg-down and the padded pools see uneven sides). One test per name does all its
checks, so each timm model is built once (on the meta device, then filled with random weights:
tests/models/timm_pairs.py).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from attention_jax.interop import (
    IncompatibleKeys,
    _merge_collections,
    load_timm_state_dict,
    timm_key_map,
    timm_model_names,
    to_timm_state_dict,
)
from attention_jax.models import create_model, list_models, model_info, pretrained_config
from tests.models.timm_pairs import timm_random

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet50d", "seresnet18",
         "seresnet34", "seresnet50", "seresnet101", "ecaresnet50d", "ecaresnet101d",
         "skresnet18", "skresnet34", "skresnext50_32x4d", "resnest14d", "resnest26d",
         "resnest50d", "gcresnet50t"]
X = np.random.default_rng(0).normal(size=(2, 72, 56, 3)).astype(np.float32)


def test_zoo_lists_the_issue_names_and_the_trainer_models():
    assert timm_model_names() == sorted(NAMES)
    assert list_models() == sorted([*NAMES, "cnn", "stcnn", "resnet"])


def _count(tree) -> int:
    return sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(tree))


# Run op by op instead of as one compiled program: the 32-group convolutions are split into 32
# convolutions each on the CPU (attention_jax.functional.convolution), so the whole network is
# one program of ~1,000 convolutions that XLA:CPU took 237 s to compile (forward only, loaded
# 2-core VM; the test compiled forward, nnx forward and, separately, the gradients: 367 + 268 s).
# Op by op, each distinct convolution shape compiles once: 57 s for both forwards, same checks.
EAGER = {"skresnext50_32x4d"}


def _jit_unless_eager(name, fun):
    return fun if name in EAGER else jax.jit(fun)


def _linen_and_nnx_logits(name, variables, x):
    """Logits of the linen model and of the nnx model holding the same variables, in one
    compiled function (the two traces share their identical parts; any difference in the nnx
    forward shows as different logits); op by op for the ``EAGER`` names."""
    model = create_model(name)
    abstract = nnx.eval_shape(lambda: create_model(name, api="nnx", rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    @functools.partial(_jit_unless_eager, name)
    def both(v, x):
        st = jax.tree.map(lambda a: a, state)
        nnx.replace_by_pure_dict(st, _merge_collections(v))
        nnx_model = nnx.merge(graphdef, st)
        nnx_model.eval()
        return model.apply(v, x), nnx_model(x)

    return both(variables, jnp.asarray(x))


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_equals_timm(name):
    tm, sd = timm_random(name)
    info = model_info(name)
    # Parameter counts: timm's (live), the documented one, ours.
    n_timm = sum(p.numel() for p in tm.parameters())
    assert n_timm == info.timm_params
    variables = load_timm_state_dict(name, sd)
    assert _count(variables["params"]) == n_timm
    # Export is the exact inverse: same keys (less num_batches_tracked), same bits, same dtype.
    back = to_timm_state_dict(variables, name)
    want = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert list(back) == list(want)  # timm's keys, in timm's order
    for k, v in want.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    again = load_timm_state_dict(name, back)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), again, variables))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    # Logits in eval mode: linen against timm; nnx against linen.
    with torch.no_grad():
        ref = tm(torch.from_numpy(X).permute(0, 3, 1, 2)).numpy()
    y_linen, y_nnx = _linen_and_nnx_logits(name, variables, X)
    err = float(np.abs(np.asarray(y_linen) - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{name}: {n_timm:,} params, max |logit| {scale:.3g}, max error {err:.2e} "
          f"({err / scale:.1e} relative)")
    assert y_linen.shape == (2, 1000)
    assert err <= 1e-4 * scale
    np.testing.assert_allclose(np.asarray(y_nnx), np.asarray(y_linen), rtol=1e-6, atol=1e-6)


def test_pretrained_configs_are_timms():
    """The configuration data equals timm's pretrained_cfg of each name's default tag."""
    from tests.timm_oracle import import_timm

    timm = import_timm()
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        ours = pretrained_config(name)
        assert (ours.tag, ours.hf_hub_id) == (cfg["tag"], cfg.get("hf_hub_id")), name
        assert tuple(cfg["input_size"]) == ours.input_size, name
        assert (cfg["crop_pct"], cfg.get("crop_mode", "center")) == (ours.crop_pct,
                                                                     ours.crop_mode), name
        assert cfg["interpolation"] == ours.interpolation, name
        assert tuple(cfg["mean"]) == ours.mean and tuple(cfg["std"]) == ours.std, name
        assert cfg["num_classes"] == ours.num_classes, name
        test_size = cfg.get("test_input_size")
        assert (tuple(test_size) if test_size else None) == ours.test_input_size, name
        assert cfg.get("test_crop_pct") == ours.test_crop_pct, name
        # Published accuracy exactly where timm publishes weights.
        assert (ours.top1 is None) == (cfg["tag"] == "untrained") == (ours.top5 is None), name


# --- gradients: one model per family, float64 referee ------------------------------------------

def _rel(a, b, floor: float = 0.0) -> float:
    """max |a - b| over max(max |b|, floor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), floor, 1e-300)


def _torch_grads(tm, x, cot, dtype):
    tm = tm.to(dtype)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).to(dtype).requires_grad_(True)
    tm.zero_grad()
    (tm(xt) * torch.from_numpy(cot).to(dtype)).sum().backward()
    grads = {k: p.grad.detach().to(torch.float64).numpy() for k, p in tm.named_parameters()}
    grads["input"] = xt.grad.permute(0, 2, 3, 1).to(torch.float64).numpy()
    tm.to(torch.float32)
    return grads


def _jax_grads(name, variables, x, cot, layers):
    model = create_model(name, layers=layers)

    @functools.partial(_jit_unless_eager, name)
    def grads(v, x):
        def loss(p, x):
            return jnp.sum(model.apply({**v, "params": p}, x) * cot.astype(x.dtype))
        return jax.grad(loss, argnums=(0, 1))(v["params"], x)

    g_params, g_x = grads(variables, x)
    out = to_timm_state_dict({"params": g_params, "batch_stats": variables["batch_stats"]}, name,
                             layers=layers)
    out = {k: v for k, v in out.items() if not k.endswith(("running_mean", "running_var"))}
    out["input"] = np.asarray(g_x)
    return out


# One model per family, one block per stage (timm's own classes at that depth).
GRAD_CASES = ["seresnet50", "ecaresnet50d", "skresnet18", "skresnext50_32x4d", "resnest14d",
              "gcresnet50t"]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_zoo_gradients_equal_timm(name):
    """Input and parameter gradients (eval mode) against timm's, in float32: every tensor within
    1e-4 of its largest entry (floored at 1e-4 of the largest gradient of the model: GC's
    ``conv_attn.bias`` has a zero gradient, its float32 value is rounding). Where float32
    disagrees, the float64 referee decides: JAX and timm both in float64 must agree to 1e-9
    (a ReLU input within float32 rounding of 0 passes the gradient in one framework and not in
    the other; in float64 both compute it on the same side)."""
    layers = (1, 1, 1, 1)
    tm, sd = timm_random(name, seed=1, layers=layers)
    variables = load_timm_state_dict(name, sd, layers=layers)
    x = X[:, :40, :40]
    cot = np.random.default_rng(2).normal(size=(2, 1000)).astype(np.float32)
    ours = _jax_grads(name, variables, jnp.asarray(x), cot, layers)
    theirs = _torch_grads(tm, x, cot, torch.float32)
    assert set(ours) == set(theirs)
    floor = 1e-4 * max(float(np.abs(g).max()) for k, g in theirs.items() if k != "input")
    errs = {k: _rel(ours[k], theirs[k], floor) for k in ours}
    off = {k: e for k, e in errs.items() if e > 1e-4}
    print(f"{name}: float32 gradients, worst {max(errs.values()):.1e}")
    if off:
        print(f"{name}: float32 disagreement in {len(off)} tensors, worst "
              f"{max(off.values()):.1e}; float64 referee")
        with jax.enable_x64(True):
            v64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), variables)
            ours64 = _jax_grads(name, v64, jnp.asarray(x, jnp.float64), cot, layers)
        theirs64 = _torch_grads(tm, x, cot, torch.float64)
        floor64 = 1e-4 * max(float(np.abs(g).max()) for k, g in theirs64.items() if k != "input")
        worst = max(_rel(ours64[k], theirs64[k], floor64) for k in ours64)
        print(f"{name}: float64 JAX vs timm: {worst:.1e}")
        assert worst <= 1e-9


# --- strict and non-strict loading, export errors ----------------------------------------------

@pytest.fixture(scope="module")
def resnet18_sd():
    return timm_random("resnet18")[1]


def test_strict_errors_name_keys_and_shapes(resnet18_sd):
    sd = dict(resnet18_sd)
    del sd["fc.weight"]
    sd["head.extra"] = np.zeros(3, np.float32)
    sd["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        load_timm_state_dict("resnet18", sd)
    msg = str(err.value)
    assert msg.startswith("load_timm_state_dict: state_dict must be the tensors of timm's "
                          "'resnet18' (num_classes=1000) with their shapes, got ")
    assert "missing keys [fc.weight (expected (1000, 512))]" in msg
    assert "unexpected keys [head.extra (shape (3,))]" in msg
    assert "wrong shapes [conv1.weight: expected (64, 3, 7, 7), got (64, 3, 3, 3)]" in msg


def test_strict_error_for_each_kind_alone(resnet18_sd):
    sd = dict(resnet18_sd)
    del sd["layer4.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"got missing keys \[layer4\.1\.bn2\.running_var "
                                         r"\(expected \(512,\)\)\]$"):
        load_timm_state_dict("resnet18", sd)
    with pytest.raises(ValueError, match=r"got unexpected keys \[x \(shape \(\)\)\]$"):
        load_timm_state_dict("resnet18", {**resnet18_sd, "x": np.float32(0)})
    with pytest.raises(ValueError, match=r"wrong shapes \[fc\.weight: expected \(10, 512\), "
                                         r"got \(1000, 512\), fc\.bias: expected \(10,\), got "
                                         r"\(1000,\)\]$"):
        load_timm_state_dict("resnet18", resnet18_sd, num_classes=10)


def test_non_strict_reports_and_fills(resnet18_sd):
    sd = {k: v for k, v in resnet18_sd.items() if not k.startswith("fc.")}
    sd["aux.weight"] = np.ones(2, np.float32)
    base = jax.tree.map(jnp.zeros_like, load_timm_state_dict("resnet18", resnet18_sd))
    v, keys = load_timm_state_dict("resnet18", sd, strict=False, init_variables=base)
    assert keys == IncompatibleKeys(["fc.bias", "fc.weight"], ["aux.weight"])
    assert not jnp.any(v["params"]["fc"]["kernel"])  # from init_variables
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"],
                                  resnet18_sd["conv1.weight"].transpose(2, 3, 1, 0))
    # A fine-tuning start: no classifier in the file, a fresh 10-class head from init.
    v, keys = load_timm_state_dict("resnet18", {k: s for k, s in sd.items() if k != "aux.weight"},
                                   strict=False, num_classes=10)
    assert keys.missing_keys == ["fc.bias", "fc.weight"] and not keys.unexpected_keys
    assert v["params"]["fc"]["kernel"].shape == (512, 10)
    # Wrong shapes stay an error, as in torch.
    with pytest.raises(ValueError, match=r"wrong shapes \[conv1\.weight"):
        load_timm_state_dict("resnet18", {**sd, "conv1.weight": np.zeros((1, 1, 1, 1))},
                             strict=False)


def test_features_only_checkpoint_and_torch_tensors(resnet18_sd):
    """timm's num_classes=0 (no fc) is our num_classes=None; torch tensors load as arrays."""
    sd = {k: torch.from_numpy(v) for k, v in resnet18_sd.items() if not k.startswith("fc.")}
    v = load_timm_state_dict("resnet18", sd, num_classes=None)
    assert "fc" not in v["params"]
    back = to_timm_state_dict(v, "resnet18")
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}


def test_export_errors():
    v = jax.eval_shape(create_model("resnet18").init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"to_timm_state_dict: variables must be the variables "
                                         r"of create_model\('resnet34', num_classes=1000\), got "
                                         r"missing \[batch_stats/layer1_2/bn1/mean"):
        to_timm_state_dict(v, "resnet34")
    with pytest.raises(ValueError, match=r"to_timm_state_dict: name must be one of "):
        to_timm_state_dict(v, "resnet")
    with pytest.raises(ValueError, match=r"load_timm_state_dict: name must be one of .*, got "
                                         r"'cnn'"):
        load_timm_state_dict("cnn", {})
    with pytest.raises(ValueError, match=r"load_timm_state_dict: state_dict must be a mapping"):
        load_timm_state_dict("resnet18", [1, 2])
    with pytest.raises(ValueError, match=r"timm_key_map: attention must be None or a mechanism "
                                         r"timm's ResNets hold weights for \('se', 'eca', 'gc'\), "
                                         r"got 'cbam'"):
        timm_key_map("resnet50", attention="cbam")


def test_key_map_names_timm_modules():
    m = timm_key_map("gcresnet50t")
    assert m["params/stem_conv1/kernel"] == "stem.conv1.conv.weight"
    assert m["params/layer2_0/attn/add_norm/scale"] == "stages.1.0.attn.mlp_add.norm.weight"
    assert m["batch_stats/layer1_0/downsample_bn/var"] == "stages.0.0.shortcut.bn.running_var"
    m = timm_key_map("skresnet18", num_classes=None)
    assert m["params/layer1_0/conv1/conv1/kernel"] == "layer1.0.conv1.paths.1.conv.weight"
    assert m["params/layer2_0/conv2/kernel"] == "layer2.0.conv2.conv.weight"
    assert not any(k.startswith("params/fc") for k in m)
    assert timm_key_map("resnest14d")["params/layer2_0/downsample_conv/kernel"] == \
        "layer2.0.downsample.1.weight"


def test_key_maps_are_kept_per_architecture_and_arguments_are_still_checked():
    """The variables-to-keys table is found once per architecture (tracing ``init``), then
    kept: the same answer again, a different one for different overrides, and an override that
    equals a kept one but has the wrong type (``1.0`` or ``True`` for ``1``) is still refused."""
    from attention_jax.interop import timm as timm_interop

    timm_interop._entries_cache.clear()
    small = timm_key_map("resnet18", layers=(1, 1, 1, 1))
    assert len(timm_interop._entries_cache) == 1
    assert timm_key_map("resnet18", layers=(1, 1, 1, 1)) == small
    assert len(timm_interop._entries_cache) == 1
    assert len(timm_key_map("resnet18", layers=(1, 1, 2, 1))) > len(small)
    assert len(timm_interop._entries_cache) == 2
    for bad in (1.0, True):
        with pytest.raises(ValueError, match=rf"timm_key_map: layers must be an integer >= 1, "
                                             rf"got {bad}"):
            timm_key_map("resnet18", layers=(1, 1, 1, bad))
    for i in range(timm_interop._ENTRIES_KEPT + 3):
        timm_key_map("resnet18", layers=(1, 1, 1, 1), num_classes=i + 1)
    assert len(timm_interop._entries_cache) == timm_interop._ENTRIES_KEPT
