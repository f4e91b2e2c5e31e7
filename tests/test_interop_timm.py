"""Checkpoint files and ``attention-jax convert``: timm state dicts in .safetensors (numpy API)
and .pth (torch.load(weights_only=True)), our variables files, both directions of the CLI, and
timm itself loading what we write. The files are made here from random timm weights."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

from attention_jax import load_linen_variables
from attention_jax.cli import main as cli_main
from attention_jax.interop import (
    load_state_dict_file,
    load_timm_state_dict,
    load_variables,
    save_state_dict_file,
    save_variables,
    to_timm_state_dict,
)
from attention_jax.models import create_model
from tests.models.timm_pairs import timm_random

NAME = "resnest14d"  # the smallest zoo model: splat, avd, deep stem, avg-down


@pytest.fixture(scope="module")
def pair():
    return timm_random(NAME, seed=3)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                      for k in a)


def test_safetensors_round_trip_and_timm_reads_it(pair, tmp_path):
    tm, sd = pair
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "w.safetensors"
    save_state_dict_file(sd, path)
    assert _same(load_state_dict_file(path), dict(sorted(sd.items())))
    # Written by numpy, read by safetensors.torch, loaded strictly by timm.
    tm.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)


def test_pth_through_torch_load_weights_only(pair, tmp_path):
    tm, sd = pair
    plain, wrapped, dp = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.bin"
    torch.save(tm.state_dict(), plain)
    torch.save({"state_dict": tm.state_dict(), "epoch": 3}, wrapped)
    torch.save({f"module.{k}": v for k, v in tm.state_dict().items()}, dp)
    want = load_timm_state_dict(NAME, sd)
    for path in (plain, wrapped, dp):
        got = load_timm_state_dict(NAME, load_state_dict_file(path))
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want))


def test_pth_refuses_pickled_code(tmp_path):
    """weights_only=True: a pickle that would run code does not load."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|Unsupported global"):
        load_state_dict_file(path)


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"load_state_dict_file: path's extension must be one of "
                                         r"'\.safetensors', '\.pth', '\.pt', '\.bin', got '\.npz'"):
        load_state_dict_file(tmp_path / "w.npz")
    with pytest.raises(ValueError, match=r"load_state_dict_file: path must be an existing file"):
        load_state_dict_file(tmp_path / "missing.safetensors")
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, path)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ValueError, match=r"load_state_dict_file: path must be a \.safetensors "
                                         r"file when torch is not installed"):
        load_state_dict_file(path)
    monkeypatch.undo()
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match=r"path must be a file holding a state dict"):
        load_state_dict_file(path)
    with pytest.raises(ValueError, match=r"save_state_dict_file: path must be a \.safetensors"):
        save_state_dict_file({}, tmp_path / "w.pth")


def test_variables_file_round_trip(pair, tmp_path):
    _, sd = pair
    variables = load_timm_state_dict(NAME, sd)
    path = tmp_path / "v.safetensors"
    save_variables(variables, path, model=NAME, num_classes=1000)
    got, meta = load_variables(path)
    assert meta == {"format": "attention-jax", "model": NAME, "num_classes": "1000"}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, variables))
    timm_file = tmp_path / "t.safetensors"
    save_state_dict_file(sd, timm_file)
    with pytest.raises(ValueError, match=r"load_variables: path must be a file written by "
                                         r"save_variables"):
        load_variables(timm_file)


def test_convert_cli_both_ways(pair, tmp_path, capsys):
    tm, sd = pair
    src, ours, back = (tmp_path / n for n in ("timm.safetensors", "jax.safetensors",
                                               "back.safetensors"))
    save_state_dict_file(sd, src)
    assert cli_main(["convert", NAME, str(src), str(ours)]) == 0
    assert "num_classes=1000" in capsys.readouterr().out
    variables, meta = load_variables(ours)
    assert meta["model"] == NAME
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables,
                                     load_timm_state_dict(NAME, sd)))
    # create_model starts from it: linen directly, nnx through load_linen_variables.
    model = nnx.eval_shape(lambda: create_model(NAME, api="nnx", rngs=nnx.Rngs(0)))
    load_linen_variables(model, variables)
    assert cli_main(["convert", NAME, str(ours), str(back), "--to", "timm"]) == 0
    want = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert _same(load_state_dict_file(back), dict(sorted(want.items())))
    tm.load_state_dict(safetensors.torch.load_file(str(back)), strict=True)


def test_convert_cli_backbone_non_strict_and_errors(pair, tmp_path, capsys):
    _, sd = pair
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    save_state_dict_file(backbone, src)
    assert cli_main(["convert", NAME, str(src), str(dst)]) == 0  # no fc in the file: no head
    assert "fc" not in load_variables(dst)[0]["params"]
    save_state_dict_file({**backbone, "extra": np.zeros(1, np.float32)}, src)
    assert cli_main(["convert", NAME, str(src), str(dst)]) == 2
    assert "unexpected keys [extra (shape (1,))]" in capsys.readouterr().err
    assert cli_main(["convert", NAME, str(src), str(dst), "--non-strict",
                     "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "missing keys (initial values kept): ['fc.bias', 'fc.weight']" in out
    assert "unexpected keys (ignored): ['extra']" in out
    assert load_variables(dst)[0]["params"]["fc"]["kernel"].shape == (2048, 10)
    assert cli_main(["convert", "resnet18", str(dst), str(src), "--to", "timm"]) == 2
    assert "convert: src must hold 'resnet18' variables" in capsys.readouterr().err


def test_export_from_an_nnx_model(pair):
    _, sd = pair
    variables = load_timm_state_dict(NAME, sd)
    model = nnx.eval_shape(lambda: create_model(NAME, api="nnx", rngs=nnx.Rngs(0)))
    load_linen_variables(model, variables)
    assert _same(to_timm_state_dict(model, NAME), to_timm_state_dict(variables, NAME))
