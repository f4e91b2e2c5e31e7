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
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 20 and summary["params"] > 0
    assert (tmp_path / "ckpt" / "20").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg"], "model must be one of 'cnn', 'resnet', 'stcnn', got 'vgg'"),
        (["--dataset", "imaginary"], "name must be one of digits/R, digits/RTS, digits/P"),
        (["--model", "resnet", "--attention", "zz"], "attention must be one of"),
        (["--resume", "--checkpoint-dir", "{tmp}/none"], "--resume needs a checkpoint"),
        (["--devices", "9"], "devices must be at most the 1 device"),
    ],
    ids=["model", "dataset", "attention", "resume-empty", "devices"],
)
def test_bad_input_exits_2_with_message(plain_dir, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main(["--steps", "2", "--batch-size", "8", "--data-dir", plain_dir, "--no-progress",
               *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("attention-jax train: error:")
    assert not (tmp_path / "none").exists()
