"""Checkpoints: resume after kill -9 and a damaged newest step, --resume-step, refusal of a
resume with other settings, unusable directories, all before the first step."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from attention_jax.train import CheckpointError, TrainConfig, train
from attention_jax.train.cli import main


def _config(data_dir, **kw):
    base = dict(dataset="digits/plain", model="cnn", steps=12, batch_size=16, lr=3e-3, seed=0,
                data_dir=data_dir, progress=False, log_every=1, eval=False, devices=1)
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_state(a, b):
    """Bit for bit: step, parameters, optimiser state (Adam's moments and counts)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def _snapshot(path):
    return sorted((os.path.relpath(os.path.join(d, f), path),
                   os.path.getmtime(os.path.join(d, f)))
                  for d, _, files in os.walk(path) for f in files)


_KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    rename = os.rename

    def rename_then_die(src, dst, *args, **kwargs):
        # orbax writes a step into a temporary directory, then renames it: die in between.
        if os.path.basename(os.fspath(dst)) == sys.argv[4]:
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(src, dst, *args, **kwargs)

    os.rename = rename_then_die
    from attention_jax.train import TrainConfig, train
    train(TrainConfig(dataset="digits/plain", model="cnn", steps=12, batch_size=16, lr=3e-3,
                      seed=0, data_dir=sys.argv[1], progress=False, log_every=1, eval=False,
                      devices=1, checkpoint_dir=sys.argv[2], checkpoint_every=4,
                      metrics_file=sys.argv[3]))
""")


def test_killed_while_saving_and_damaged_newest_step_resumes_exactly(
        plain_dir, tmp_path, subprocess_env, capfd):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, plain_dir, str(ckpt),
                           str(metrics), "12"], env=subprocess_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    names = sorted(p.name for p in ckpt.iterdir())
    # Step 12 was being written when it died: only its temporary directory exists.
    rest = [n for n in names if n not in ("4", "8")]
    assert {"4", "8"} <= set(names) and rest and all(
        n.startswith("12.orbax-checkpoint-tmp") for n in rest), names
    # Damage the newest complete step: truncate its largest file.
    files = [os.path.join(d, f) for d, _, fs in os.walk(ckpt / "8" / "state") for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as fh:
        fh.truncate(1000)
    capfd.readouterr()

    resumed = train(_config(plain_dir, checkpoint_dir=str(ckpt), checkpoint_every=4,
                            metrics_file=str(metrics), resume=True))
    err = capfd.readouterr().err
    warned = [x for x in err.splitlines() if "unreadable" in x]
    assert len(warned) == 1, err
    line = warned[0]
    assert line.startswith(f"train: checkpoint step 8 in {ckpt} is unreadable (")
    assert line.endswith("set aside as 8.unreadable, resuming from step 4")
    assert "is not valid for value of size 1000" in line  # the cause, in one line
    assert len(line) < 600 and "tensorstore" not in line.lower() and "'driver'" not in line

    full = train(_config(plain_dir))  # the uninterrupted run
    assert resumed.step == 12
    _assert_same_state(resumed.state, full.state)
    tail = [h for h in full.history if h["step"] > 4]
    assert resumed.history == [{**h, "step_time_s": r["step_time_s"]}
                               for h, r in zip(tail, resumed.history, strict=True)]
    # The damaged step is kept aside, the dead write's temporary directory is gone, and the
    # metrics file holds each step once.
    assert sorted(p.name for p in ckpt.iterdir()) == ["12", "8", "8.unreadable"]
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(
        range(1, 13))


def test_resume_step_continues_from_an_older_step(plain_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    first = train(_config(plain_dir, steps=8, checkpoint_dir=str(ckpt), checkpoint_every=4))
    args = ["--dataset", "digits/plain", "--model", "cnn", "--steps", "8", "--batch-size", "16",
            "--lr", "3e-3", "--seed", "0", "--data-dir", plain_dir, "--no-progress",
            "--no-eval", "--devices", "1", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "4"]
    capsys.readouterr()
    assert main([*args, "--resume-step", "6"]) == 2
    assert ("resume_step must be one of the steps checkpointed in "
            f"{ckpt} (4, 8), got 6") in capsys.readouterr().err
    assert main([*args, "--resume-step", "4"]) == 0  # --resume-step implies --resume
    out = capsys.readouterr()
    assert (f"train: resuming from step 4: the newer step 8 in {ckpt} was set aside as "
            "8.superseded") in out.err
    assert json.loads(out.out.splitlines()[-1])["step"] == 8
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8", "8.superseded"]
    # The re-run of steps 5-8 wrote the same state as the first time.
    again = train(_config(plain_dir, steps=8, checkpoint_dir=str(ckpt), resume=True))
    assert again.step == 8
    _assert_same_state(again.state, first.state)


def test_resume_with_other_settings_is_refused_unless_overridden(plain_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    train(_config(plain_dir, steps=4, checkpoint_dir=str(ckpt), checkpoint_every=4))
    before = _snapshot(ckpt)
    resume = dict(checkpoint_dir=str(ckpt), resume=True, steps=4)

    with pytest.raises(CheckpointError, match="must have the same seed, got .* holding seed=0 "
                                              "while this run asks for seed=1; .* pass "
                                              "--resume-override seed to continue anyway"):
        train(_config(plain_dir, **{**resume, "seed": 1}))
    with pytest.raises(CheckpointError, match="same steps, batch_size, lr, got .* holding "
                                              "steps=4, batch_size=16, lr=0.003 while this run "
                                              "asks for steps=8, batch_size=8, lr=0.001"):
        train(_config(plain_dir, **{**resume, "steps": 8, "batch_size": 8, "lr": 1e-3}))
    with pytest.raises(CheckpointError, match="same optimizer"):
        train(_config(plain_dir, **{**resume, "optimizer": "sgd"}))
    # Overridden, the optimiser still cannot carry over: our message, not orbax's.
    with pytest.raises(CheckpointError) as err:
        train(_config(plain_dir, **{**resume, "optimizer": "sgd"},
                      resume_override=("optimizer",)))
    message = str(err.value)
    assert "must hold this run's optimizer state" in message
    assert "saved with optimizer 'adam' (this run: 'sgd')" in message
    assert "partial_restore" not in message and "\n" not in message
    assert _snapshot(ckpt) == before  # nothing was written by the refused runs

    # Adam ignores --momentum: changing it changes nothing, and is not refused.
    longer = train(_config(plain_dir, **{**resume, "steps": 6, "momentum": 0.5},
                           resume_override=("steps",)))
    assert longer.step == 6 and [h["step"] for h in longer.history] == [5, 6]


def test_unusable_paths_fail_before_the_first_step(plain_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    steps = []
    record = lambda step, metrics: steps.append(step)  # noqa: E731
    cases = [
        (dict(checkpoint_dir=str(a_file)),
         f"train: checkpoint_dir must be a path usable as a directory, got '{a_file}', which "
         "is a file"),
        (dict(checkpoint_dir=str(a_file / "ckpt")),
         f"checkpoint_dir must be a path usable as a directory, got '{a_file / 'ckpt'}', "
         f"which lies under the file '{a_file}'"),
        (dict(metrics_file=str(a_file / "m.jsonl")),
         f"metrics_file must be a path usable as a file, got '{a_file / 'm.jsonl'}', which "
         f"lies under the file '{a_file}'"),
        (dict(metrics_file=str(tmp_path)),
         f"metrics_file must be a path usable as a file, got '{tmp_path}', which is a "
         "directory"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError) as err:
            train(_config(plain_dir, steps=2, **kw), callback=record)
        assert message in str(err.value)
    assert steps == [] and a_file.read_text() == "not a directory"


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
        train(_config(plain_dir, model="stcnn", steps=2, checkpoint_dir=str(ckpt), resume=True,
                      metrics_file=str(metrics)))
    with pytest.raises(CheckpointError, match="same dataset"):
        train(_config(plain_dir, dataset="digits/R", steps=2, checkpoint_dir=str(ckpt),
                      resume=True))
    with pytest.raises(CheckpointError, match="must be empty or new .* pass --resume"):
        train(_config(plain_dir, steps=2, checkpoint_dir=str(ckpt)))
    assert _snapshot(ckpt) == before and not metrics.exists()
