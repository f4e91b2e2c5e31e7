"""``attention-jax train``: a short run that learns, and bad input answered with exit code 2."""

import json

import pytest

from attention_jax.cli import main as cli_main
from attention_jax.train.cli import main


def test_twenty_step_run_reduces_the_loss(plain_dir, tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    rc = cli_main(["train", "--dataset", "digits/plain", "--model", "cnn", "--steps", "20",
                   "--batch-size", "32", "--lr", "3e-3", "--seed", "1", "--log-every", "5",
                   "--data-dir", plain_dir, "--metrics", str(metrics), "--no-progress",
                   "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "10"])
    assert rc == 0
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]
    test = [r for r in records if r["split"] == "test"]
    assert len(test) == 1 and test[0]["count"] == 299 and 0 <= test[0]["error"] <= 1
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["step"] == 20 and summary["params"] > 0
    # Without a progress bar the run still says how it goes: one line per --log-every.
    logged = [x for x in out if x.startswith("step ")]
    assert [x.split(":")[0] for x in logged] == ["step 5/20", "step 10/20", "step 15/20",
                                                 "step 20/20"]
    assert f"loss {train[0]['loss']:.4f}" in logged[0]
    assert any(x.startswith("test at step 20: loss ") and "(299 examples)" in x for x in out)
    assert (tmp_path / "ckpt" / "20").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg"], "model must be one of 'cnn', 'ecaresnet101d', "),
        (["--dataset", "imaginary"], "name must be one of digits/R, digits/RTS, digits/P"),
        (["--model", "resnet", "--attention", "zz"], "attention must be one of"),
        (["--resume", "--checkpoint-dir", "{tmp}/none"], "--resume needs a checkpoint"),
        (["--devices", "9"], "devices must be at most the 1 device"),
        (["--clip-norm", "-1"], "clip_norm must be None or a positive number, got -1.0"),
        (["--lr", "nan"], "train: lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "train: lr must be a finite number > 0, got inf"),
        (["--lr", "-1"], "train: lr must be a finite number > 0, got -1.0"),
        (["--momentum", "nan"], "train: momentum must be a finite number in [0, 1), got nan"),
        (["--weight-decay", "-1"], "train: weight_decay must be a finite number >= 0, got -1.0"),
        (["--checkpoint-dir", "{tmp}/file"], "checkpoint_dir must be a path usable as a "
                                             "directory, got '{tmp}/file', which is a file"),
        (["--metrics", "{tmp}/file/m.jsonl"], "metrics_file must be a path usable as a file, "
                                              "got '{tmp}/file/m.jsonl', which lies under "
                                              "the file '{tmp}/file'"),
        (["--freeze-backbone"], "train: freeze_backbone must be used with init_from"),
        (["--init-from", "{tmp}/none.safetensors"],
         "train: init_from must be an existing file (a timm state dict"),
        (["--model", "cnn", "--init-from", "{tmp}/file"], "train: init_from must be a timm "
                                                          "state dict (.safetensors, .pth"),
    ],
    ids=["model", "dataset", "attention", "resume-empty", "devices", "clip-norm", "lr-nan",
         "lr-inf", "lr-negative", "momentum-nan", "weight-decay-negative", "checkpoint-file",
         "metrics-under-file", "freeze-without-init", "init-from-missing",
         "init-from-extension"],
)
def test_bad_input_exits_2_with_message(plain_dir, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("a file")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    rc = main(["--steps", "2", "--batch-size", "8", "--dataset", "digits/plain", "--data-dir",
               plain_dir, "--no-progress", *args])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2 and message in err and err.startswith("attention-jax train: error:"), err
    assert "step " not in captured.out  # refused before the first step
    assert not (tmp_path / "none").exists()


def test_clip_norm_flag():
    from attention_jax.train.cli import build_parser
    from attention_jax.train.trainer import TrainConfig, make_optimizer

    p = build_parser()
    assert p.parse_args([]).clip_norm == TrainConfig().clip_norm == 1.0
    assert p.parse_args(["--clip-norm", "0"]).clip_norm is None
    assert p.parse_args(["--clip-norm", "2.5"]).clip_norm == 2.5
    # The threshold reaches the optimiser: plain SGD's first update is -lr * (clipped) grad.
    import jax.numpy as jnp
    import optax

    g = {"w": jnp.full((4,), 1e6)}
    for clip, norm in ((2.5, 2.5), (None, 2e6)):
        tx, _ = make_optimizer(TrainConfig(optimizer="sgd", lr=1.0, schedule="constant",
                                           weight_decay=0.0, clip_norm=clip))
        upd, _ = tx.update(g, tx.init(g), g)
        assert abs(float(optax.tree.norm(upd)) - norm) < 1e-4 * norm


def test_cpu_convolutions_flag():
    from attention_jax.train.cli import build_parser

    p = build_parser()
    assert p.parse_args([]).cpu_convolutions == "eigen"
    assert p.parse_args(["--cpu-convolutions", "ynnpack"]).cpu_convolutions == "ynnpack"


def test_resume_flags():
    from attention_jax.train.cli import build_parser

    args = build_parser().parse_args(["--resume-override", "batch-size", "--resume-override",
                                      "lr", "--resume-step", "4", "--api", "nnx"])
    assert args.resume_override == ["batch_size", "lr"] and args.resume_step == 4
    assert args.api == "nnx" and build_parser().parse_args([]).resume_override == []
