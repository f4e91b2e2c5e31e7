"""The training loop: exact resume, 1 vs 4 devices, checkpoint-directory errors, bad names."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from attention_jax.train import TrainConfig, train


def _config(data_dir, **kw):
    base = dict(dataset="digits/plain", model="cnn", steps=10, batch_size=16, lr=3e-3,
                seed=0, data_dir=data_dir, progress=False, log_every=1, eval=False)
    base.update(kw)
    return TrainConfig(**base)


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(done, metrics):
        if done == step:
            raise _Stop
    return callback


def _same_state(a, b):
    """Bit for bit: step, parameters, optimiser state, batch statistics."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def _same_curve(resumed, full, start):
    """The resumed records are the uninterrupted run's from ``start`` on, to the last bit."""
    timeless = lambda h: {k: v for k, v in h.items() if k != "step_time_s"}  # noqa: E731
    assert [timeless(h) for h in resumed.history] == [
        timeless(h) for h in full.history if h["step"] > start]


def _interrupted_then_resumed(cfg, stop, **kw):
    with pytest.raises(_Stop):
        train(cfg, callback=_stop_at(stop), **kw)
    return train(TrainConfig(**{**cfg.__dict__, "resume": True}), **kw)


def test_resume_continues_exactly(plain_dir, tmp_path):
    # On-the-fly distortions draw a key per step: the resumed run must draw the same ones.
    full = train(_config(plain_dir, distort="R"))
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    cfg = _config(plain_dir, distort="R", checkpoint_dir=str(ckpt), checkpoint_every=4,
                  metrics_file=str(metrics))
    resumed = _interrupted_then_resumed(cfg, 6)  # stopped at 6, after the checkpoint of 4
    assert resumed.step == 10
    _same_state(resumed.state, full.state)
    _same_curve(resumed, full, 4)
    # The metrics file holds each step once (the lines of the lost steps 5-6 were rewritten).
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert full.history[0]["loss"] > full.history[-1]["loss"]


def test_cpu_convolutions_reach_the_train_and_eval_steps(plain_dir, request):
    """``cpu_convolutions="eigen"`` (the default): the train step and the evaluation step
    compile with ``cpu_compiler_options("eigen")``; the run matches XLA's default one
    (``"ynnpack"``) to float rounding."""
    from attention_jax import cpu_compiler_options

    assert TrainConfig().cpu_convolutions == "eigen"
    default = train(_config(plain_dir, model="resnet", steps=4, eval=True,
                            cpu_convolutions="ynnpack"))
    seen = request.getfixturevalue("jit_options")  # from here on: the eigen run's jits
    eigen = train(_config(plain_dir, model="resnet", steps=4, eval=True))
    assert seen.count(cpu_compiler_options("eigen")) == 2  # train step, evaluation step
    for a, b in zip(eigen.history, default.history, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(eigen.eval["loss"], default.eval["loss"], rtol=1e-4)


def test_nnx_model_trains_and_resumes_exactly(plain_dir, tmp_path):
    kw = dict(model="resnet", api="nnx", steps=6, batch_size=8)
    small = dict(layers=(1,), widths=(8,), stem_width=8)  # a ResNet that compiles in seconds
    full = train(_config(plain_dir, **kw), model_overrides=small)
    cfg = _config(plain_dir, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=3, **kw)
    resumed = _interrupted_then_resumed(cfg, 4, model_overrides=small)
    assert resumed.step == 6
    _same_state(resumed.state, full.state)
    _same_curve(resumed, full, 3)
    assert resumed.state["batch_stats"] and resumed.state["opt_state"]
    # What comes back is an nnx ResNet holding the trained variables, in eval mode.
    from flax import nnx

    from attention_jax.models.resnet_nnx import ResNet

    assert isinstance(resumed.model, ResNet)
    params = nnx.to_pure_dict(nnx.state(resumed.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, params, resumed.variables["params"])
    # evaluate() takes the nnx module as it is, and agrees with the linen twin.
    from attention_jax.data import Loader, load
    from attention_jax.train import create_model, evaluate

    loader = Loader(load("digits/plain", split="test", data_dir=plain_dir), batch_size=100,
                    shuffle=False, drop_remainder=False)
    got = evaluate(resumed.model, None, loader)
    twin = create_model("resnet", num_classes=10, **small)
    want = evaluate(twin, resumed.variables, loader)
    assert got["count"] == want["count"] == 299
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1 / 299)
    # The checkpoint is the linen model's: the linen ResNet resumes it (a declared API change).
    linen = train(TrainConfig(**{**cfg.__dict__, "api": "linen", "resume": True, "steps": 7,
                                 "resume_override": ("api", "steps")}), model_overrides=small)
    assert linen.step == 7 and [h["step"] for h in linen.history] == [7]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"model": "vgg"}, "train: model must be one of 'cnn', 'ecaresnet101d', .*'resnet', "
                           ".*'stcnn', got 'vgg'"),
        ({"model": "resnet", "attention": "nope"}, "train: attention must be one of .*'se'"),
        ({"dataset": "nope/R"}, "load: name must be one of digits/R, digits/RTS"),
        ({"optimizer": "lion"}, "train: optimizer must be one of 'adam', 'sgd'"),
        ({"devices": 64}, "train: devices must be at most the 1 device"),
        ({"resume": True}, "train: checkpoint_dir must be given with resume"),
        ({"model": "cnn", "attention": "se"}, "create_model: attention must be None for model"),
    ],
    ids=["model", "attention", "dataset", "optimizer", "devices", "resume-no-dir",
         "attention-on-cnn"],
)
def test_bad_names_list_the_known_ones(plain_dir, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_config(plain_dir, **kw))


_FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from attention_jax.train import TrainConfig, train
    assert jax.device_count() == 4, jax.devices()
    base = dict(dataset="digits/plain", model="cnn", steps=5, batch_size=16, lr=3e-3, seed=0,
                data_dir=sys.argv[1], progress=False, log_every=1, eval=True,
                eval_batch_size=100)
    out = {}
    for n in (1, 4):
        r = train(TrainConfig(devices=n, **base))
        out[n] = {"loss": [h["loss"] for h in r.history if h["split"] == "train"],
                  "eval": r.eval["loss"],
                  "params": [float(abs(p).sum()) for p in jax.tree.leaves(r.variables)]}
    try:
        train(TrainConfig(devices=4, **{**base, "batch_size": 18}))
    except ValueError as err:
        out["error"] = str(err)
    print("RESULT", json.dumps(out))
""")


def test_one_and_four_devices_agree(plain_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu",
           # Reuse this session's compilation cache (see conftest.py).
           "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, plain_dir], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    one, four = out["1"], out["4"]
    assert len(one["loss"]) == 5
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(four["params"], one["params"], rtol=1e-5)
    assert four["eval"] == pytest.approx(one["eval"], rel=1e-5)
    assert "train: batch_size must be divisible by the device count 4" in out["error"]
