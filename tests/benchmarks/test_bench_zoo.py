"""``benchmarks/bench_zoo.py``'s convolution breakdown: each convolution runs in the form
attention_jax's model runs it, and the breakdown times JAX against PyTorch for real."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attention_jax.functional.convolution import conv_general_dilated
from benchmarks import bench_zoo
from tests.timm_oracle import import_timm


def _toy():
    """A ResNet-like stem (a 3x3 and a 1x1 convolution) then timm's SK and split-attention
    blocks: every convolution of the two blocks is the library's, the stem's 3x3 XLA's."""
    import_timm()
    from timm.layers import SelectiveKernel, SplitAttn

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.Conv2d(8, 16, 1, bias=False),
        SelectiveKernel(16, 16),
        SplitAttn(16, 16, radix=2),
    )


def test_conv_forms_follow_the_models():
    tm = _toy()
    forms = bench_zoo.conv_forms(tm, torch)
    convs = [m for m in tm.modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(forms) == set(convs)
    assert forms[tm[0]] == "xla" and forms[tm[1]] == "ours"
    inner = [m for block in (tm[2], tm[3]) for m in block.modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert any(m.kernel_size == (3, 3) for m in inner)  # the blocks' 3x3s are the library's too
    assert all(forms[m] == "ours" for m in inner)


def test_breakdown_times_every_convolution_in_its_form(monkeypatch):
    tm = _toy()
    args = argparse.Namespace(repeats=3, min_repeat_s=0.0, settle_s=0.0)
    shapes = bench_zoo.conv_shapes(tm, torch, "cpu", 2, 8)
    assert {key[-1] for key in shapes} == {"xla", "ours"}
    traced = []  # (input channels, output channels, groups) of each library call traced

    def library_conv(lhs, rhs, *a, **kw):
        traced.append((lhs.shape[-1], rhs.shape[-1], kw.get("feature_group_count", 1)))
        return conv_general_dilated(lhs, rhs, *a, **kw)

    monkeypatch.setattr(bench_zoo, "conv_general_dilated", library_conv)
    ours = {(k[1], k[4], k[9]) for k in shapes if k[-1] == "ours"}
    for mode in ("forward", "train"):
        traced.clear()
        br = bench_zoo.conv_breakdown(tm, torch, "cpu", batch=2, size=8, args=args, mode=mode)
        assert set(traced) == ours  # the library ran exactly the "ours" convolutions
        assert len(br["convs"]) == len(shapes)
        assert sum(r["count"] for r in br["convs"]) == sum(shapes.values())
        assert {r["shape"]["form"] for r in br["convs"]} == {"xla", "ours"}
        assert all(r["jax_s"] > 0 and r["torch_s"] > 0 for r in br["convs"])
        assert np.isclose(br["jax_s"], sum(r["jax_s"] for r in br["convs"]))


def test_breakdown_compiles_with_the_chosen_convolution_runtime(jit_options):
    """``--cpu-convolutions eigen`` reaches the breakdown's JAX programs (and the models'
    inference and training steps, which take their options from the same helper)."""
    from attention_jax import cpu_compiler_options

    args = argparse.Namespace(repeats=1, min_repeat_s=0.0, settle_s=0.0,
                              cpu_convolutions="eigen")
    bench_zoo.conv_breakdown(_toy(), torch, "cpu", batch=2, size=8, args=args, mode="train")
    eigen = cpu_compiler_options("eigen")
    assert jit_options and all(o == eigen for o in jit_options)
    assert bench_zoo._options(argparse.Namespace()) == {}  # XLA's default when not given
