"""Metrics: strict JSON lines (null for non-finite numbers), one line each on stdout, and a run
that stops, or with ``on_nonfinite="continue"`` goes on, when the loss is no longer finite."""

import json
import math

import pytest

from attention_jax.train import MetricsWriter, NonFiniteLossError, TrainConfig, train
from attention_jax.train.cli import main
from attention_jax.train.metrics import strict_json


def _strict(text):
    """json.loads that refuses NaN/Infinity (Python's json accepts them by default)."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_strict_json_writes_null_for_non_finite():
    line = strict_json({"step": 3, "loss": math.nan, "lr": math.inf, "acc": -math.inf,
                        "nested": {"x": math.nan, "y": 1.5}, "count": 7})
    assert _strict(line) == {"step": 3, "loss": None, "lr": None, "acc": None,
                             "nested": {"x": None, "y": 1.5}, "count": 7}


def test_writer_keeps_resumed_lines_and_echoes(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = []
    w = MetricsWriter(str(path), total=4, echo=lines.append)
    for step in (1, 2, 3):
        w.write({"step": step, "split": "train", "loss": 1.0 / step, "accuracy": 0.5,
                 "lr": 1e-3, "step_time_s": 0.002})
    w.close()
    assert lines[0] == "step 1/4: loss 1.0000, accuracy 0.500, lr 0.001, 2.0 ms/step"
    # Resumed from step 2: line 3 is dropped (it is recomputed), 1-2 are kept.
    w = MetricsWriter(str(path), start=2, resume=True, total=4, echo=None)
    w.write({"step": 3, "split": "train", "loss": math.nan, "accuracy": 0.5, "lr": 1e-3,
             "step_time_s": 0.002})
    w.write({"step": 4, "split": "test", "loss": 0.5, "accuracy": 0.9, "error": 0.1,
             "count": 10})
    w.close()
    records = [_strict(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["loss"] is None
    assert w.history[0]["loss"] != w.history[0]["loss"]  # the history keeps the NaN itself


def _diverging(data_dir, **kw):
    # SGD at lr 1e30 without clipping: step 1 is finite, its update makes step 2's loss NaN.
    base = dict(dataset="digits/plain", model="cnn", steps=4, batch_size=16, lr=1e30,
                optimizer="sgd", momentum=0.0, schedule="constant", clip_norm=None,
                data_dir=data_dir, progress=False, log_every=1, eval=False, devices=1)
    base.update(kw)
    return TrainConfig(**base)


def test_non_finite_loss_stops_before_saving_that_state(plain_dir, tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    with pytest.raises(NonFiniteLossError, match="the loss became nan at step 2 .*--on-nonfinite "
                                                 "continue"):
        train(_diverging(plain_dir, checkpoint_dir=str(ckpt), checkpoint_every=1,
                         metrics_file=str(metrics)))
    assert sorted(p.name for p in ckpt.iterdir()) == ["1"]  # the NaN state was not saved
    records = [_strict(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] is None


def test_non_finite_loss_with_continue_keeps_strict_json(plain_dir, tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    rc = main(["--dataset", "digits/plain", "--model", "cnn", "--steps", "3", "--batch-size",
               "16", "--lr", "1e30", "--optimizer", "sgd", "--momentum", "0", "--schedule",
               "constant", "--clip-norm", "0", "--data-dir", plain_dir, "--no-progress",
               "--log-every", "1", "--metrics", str(metrics), "--on-nonfinite", "continue"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    records = [_strict(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert records[-1]["split"] == "test" and records[-1]["loss"] is None
    summary = _strict(out[-1])
    assert summary["train_loss"] is None and summary["test_loss"] is None
    assert out[1].startswith("step 2/3: loss nan")


def test_non_finite_loss_exits_1_from_the_cli(plain_dir, capsys):
    rc = main(["--dataset", "digits/plain", "--model", "cnn", "--steps", "3", "--batch-size",
               "16", "--lr", "1e30", "--optimizer", "sgd", "--momentum", "0", "--schedule",
               "constant", "--clip-norm", "0", "--data-dir", plain_dir, "--no-progress",
               "--log-every", "1", "--no-eval"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("attention-jax train: error: train: the loss became nan at step 2")
