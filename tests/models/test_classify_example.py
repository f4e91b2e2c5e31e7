"""examples/classify.py end to end: without a checkpoint it says what to supply; with one (a
timm checkpoint file of random weights, made here) it prints the top-5 classes timm's own model
gives on timm's eval transform of the same photos."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest
import torch

from attention_jax.interop import save_state_dict_file
from attention_jax.models import pretrained_config
from tests.models.test_preprocess import PHOTOS, timm_eval_transform
from tests.models.timm_pairs import timm_random

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "classify.py"
NAME = "resnest14d"


def _example():
    spec = importlib.util.spec_from_file_location("classify_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_checkpoint_says_what_to_supply(capsys):
    assert _example().main(["--model", "seresnet50"]) == 2
    err = capsys.readouterr().err
    assert "timm's seresnet50.a1_in1k weights (ImageNet-1k top-1 80.01% at 224 px)" in err
    assert ("m = timm.create_model('seresnet50', pretrained=True); "
            "safetensors.torch.save_file(m.state_dict(), 'seresnet50.safetensors')") in err
    assert "--checkpoint seresnet50.safetensors" in err


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_top5_equals_timms(api, tmp_path, capsys):
    tm, sd = timm_random(NAME, seed=4)
    ckpt = tmp_path / f"{NAME}.safetensors"
    save_state_dict_file(sd, ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"label{i}" for i in range(1000)))
    assert _example().main(["--model", NAME, "--checkpoint", str(ckpt), "--labels", str(labels),
                            "--api", api]) == 0
    out = capsys.readouterr().out
    blocks = re.findall(r"^(\w+):\n((?:  .*\n){5})", out, re.M)
    assert [b[0] for b in blocks] == list(PHOTOS)
    cfg = pretrained_config(NAME)
    for (_, lines), img in zip(blocks, PHOTOS.values(), strict=True):
        ours = [int(i) for i in re.findall(r"label(\d+)", lines)]
        x = torch.from_numpy(timm_eval_transform(img, cfg)).permute(2, 0, 1)[None]
        with torch.no_grad():
            theirs = torch.topk(tm(x)[0], 5).indices.tolist()
        assert ours == theirs
        probs = [float(p) for p in re.findall(r"([\d.]+)%", lines)]
        assert probs == sorted(probs, reverse=True) and np.isfinite(probs).all()
