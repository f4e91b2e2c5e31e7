"""``TrainConfig`` checks every field when built; ``make_optimizer`` clips, decays, schedules."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.train import TrainConfig
from attention_jax.train.config import RESUME_KEYS, make_optimizer

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"lr": NAN}, "train: lr must be a finite number > 0, got nan"),
        ({"lr": INF}, "train: lr must be a finite number > 0, got inf"),
        ({"lr": -1.0}, "train: lr must be a finite number > 0, got -1.0"),
        ({"lr": 0.0}, "train: lr must be a finite number > 0, got 0.0"),
        ({"lr": "0.1"}, "train: lr must be a finite number > 0, got 0.1"),
        ({"lr": True}, "train: lr must be a finite number > 0, got True"),
        ({"momentum": NAN}, r"train: momentum must be a finite number in \[0, 1\), got nan"),
        ({"momentum": 1.0}, r"train: momentum must be a finite number in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be a finite number in \[0, 1\), got -0.1"),
        ({"weight_decay": -1.0}, "train: weight_decay must be a finite number >= 0, got -1.0"),
        ({"weight_decay": INF}, "train: weight_decay must be a finite number >= 0, got inf"),
        ({"clip_norm": NAN}, "train: clip_norm must be None or a positive number, got nan"),
        ({"clip_norm": 0.0}, "train: clip_norm must be None or a positive number, got 0.0"),
        ({"seed": -1}, "train: seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "train: seed must be an integer >= 0, got 1.5"),
        ({"steps": 0}, "train: steps must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "train: batch_size must be an integer >= 1, got 2.5"),
        ({"log_every": -5}, "train: log_every must be an integer >= 1, got -5"),
        ({"devices": 0}, "train: devices must be an integer >= 1, got 0"),
        ({"api": "haiku"}, "train: api must be one of 'linen', 'nnx', got 'haiku'"),
        ({"optimizer": "lion"}, "train: optimizer must be one of 'adam', 'sgd', got 'lion'"),
        ({"on_nonfinite": "ignore"}, "train: on_nonfinite must be one of 'stop', 'continue'"),
        ({"cpu_convolutions": "onednn"},
         "train: cpu_convolutions must be one of 'ynnpack', 'eigen', got 'onednn'"),
        ({"distort": "Q"}, "train: distort must be one of"),
        ({"attention": "nope"}, "train: attention must be one of .*'se'"),
        ({"eval": "yes"}, "train: eval must be True or False, got 'yes'"),
        ({"model": ""}, "train: model must be a non-empty string, got ''"),
        ({"resume": True}, "train: checkpoint_dir must be given with resume"),
        ({"resume_step": 4, "checkpoint_dir": "x"}, "train: resume must be True with "
                                                    "resume_step, got False"),
        ({"resume_step": 0, "resume": True, "checkpoint_dir": "x"},
         "train: resume_step must be an integer >= 1, got 0"),
        ({"resume_override": ("colour",)}, "train: resume_override must be one of 'model'"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else None,
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_accepts_the_edges_and_normalises():
    c = TrainConfig(momentum=0.0, weight_decay=0.0, clip_norm=None, seed=0, lr=np.float32(2.0),
                    resume_override="seed", resume=True, checkpoint_dir="x", resume_step=3)
    assert c.resume_override == ("seed",)
    assert set(RESUME_KEYS) >= {"seed", "lr", "batch_size", "steps", "optimizer"}
    import dataclasses

    with pytest.raises(ValueError, match="lr must be a finite number > 0, got nan"):
        dataclasses.replace(c, lr=NAN)  # checked on every construction, replace included


def test_make_optimizer_clips_global_norm():
    params = {"w": jnp.zeros(4)}
    huge = {"w": jnp.full(4, 1e6)}  # global norm 2e6
    for clip, expected in ((1.0, 1.0), (None, 2e6)):
        tx, _ = make_optimizer(TrainConfig(optimizer="sgd", momentum=0.0, lr=1.0,
                                           schedule="constant", clip_norm=clip))
        upd, _ = tx.update(huge, tx.init(params), params)
        np.testing.assert_allclose(float(jnp.linalg.norm(upd["w"])), expected, rtol=1e-5)


def test_cosine_schedule_spans_the_steps():
    _, schedule = make_optimizer(TrainConfig(lr=0.5, steps=10))
    assert float(schedule(0)) == pytest.approx(0.5)
    assert float(schedule(5)) == pytest.approx(0.25, rel=1e-6)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-9)
