"""The training loop: exact resume, 1 vs 4 devices, checkpoint-directory errors, bad names."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from attention_jax.train import CheckpointError, TrainConfig, train


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


def _snapshot(path):
    return sorted((os.path.relpath(os.path.join(d, f), path),
                   os.path.getmtime(os.path.join(d, f)))
                  for d, _, files in os.walk(path) for f in files)


def test_resume_continues_exactly(plain_dir, tmp_path):
    full = train(_config(plain_dir))
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    cfg = _config(plain_dir, checkpoint_dir=str(ckpt), checkpoint_every=4,
                  metrics_file=str(metrics))
    with pytest.raises(_Stop):  # interrupted at step 6, after the checkpoint of step 4
        train(cfg, callback=_stop_at(6))
    resumed = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    assert resumed.step == 10
    for a, b in zip(jax.tree.leaves(full.variables), jax.tree.leaves(resumed.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # The resumed part of the loss curve is the uninterrupted one, and the metrics file holds
    # each step once (the lines of the lost steps 5-6 were rewritten).
    losses = {h["step"]: h["loss"] for h in full.history}
    for h in resumed.history:
        assert h["loss"] == pytest.approx(losses[h["step"]], rel=1e-6)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert full.history[0]["loss"] > full.history[-1]["loss"]


def test_checkpoint_dir_errors_write_nothing(plain_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="--resume needs a checkpoint .* no checkpoint"):
        train(_config(plain_dir, checkpoint_dir=str(empty), resume=True))
    assert not any(empty.iterdir())
    missing = tmp_path / "missing"
    with pytest.raises(CheckpointError, match="which does not exist"):
        train(_config(plain_dir, checkpoint_dir=str(missing), resume=True))
    assert not missing.exists()

    ckpt = tmp_path / "cnn"
    train(_config(plain_dir, steps=2, checkpoint_dir=str(ckpt), checkpoint_every=2))
    before = _snapshot(ckpt)
    metrics = tmp_path / "other.jsonl"
    with pytest.raises(CheckpointError, match="same model, .*got .* model='cnn'.* while this "
                                              "run asks for model='stcnn'"):
        train(_config(plain_dir, model="stcnn", checkpoint_dir=str(ckpt), resume=True,
                      metrics_file=str(metrics)))
    with pytest.raises(CheckpointError, match="same dataset"):
        train(_config(plain_dir, dataset="digits/R", checkpoint_dir=str(ckpt), resume=True))
    with pytest.raises(CheckpointError, match="must be empty or new .* pass --resume"):
        train(_config(plain_dir, steps=2, checkpoint_dir=str(ckpt)))
    assert _snapshot(ckpt) == before and not metrics.exists()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"model": "vgg"}, "train: model must be one of 'cnn', 'resnet', 'stcnn', got 'vgg'"),
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


def test_make_optimizer_clips_global_norm():
    import jax.numpy as jnp

    from attention_jax.train.trainer import make_optimizer

    params = {"w": jnp.zeros(4)}
    huge = {"w": jnp.full(4, 1e6)}  # global norm 2e6
    for clip, expected in ((1.0, 1.0), (None, 2e6)):
        tx, _ = make_optimizer(TrainConfig(optimizer="sgd", momentum=0.0, lr=1.0,
                                           schedule="constant", clip_norm=clip))
        upd, _ = tx.update(huge, tx.init(params), params)
        np.testing.assert_allclose(float(jnp.linalg.norm(upd["w"])), expected, rtol=1e-5)
