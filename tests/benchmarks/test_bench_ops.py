"""``benchmarks/bench_ops.py``: each kind of bare operation runs, its three forms agree, and
the ratios it reports are the medians' quotients (a smoke run: two repeats, so the second
round settles after PyTorch, batch 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_ops


@pytest.mark.parametrize("row", ["cam", "stn", "pam", "gates", "cca"])
# matmul, conv, attention, gates, criss-cross
def test_smoke_run_reports_consistent_ratios(row, tmp_path):
    out = tmp_path / "ops.json"
    results = bench_ops.main(["--only", row, "--batch-sizes", "1", "--repeats", "2",
                              "--min-repeat-s", "0", "--json", str(out)])
    assert results and all(r["row"] == row for r in results)
    for r in results:
        med = r["median_s"]
        assert set(med) == {f"{n} {m}" for n in ("xla", "ours", "torch") for m in ("fwd", "f+b")}
        assert all(v > 0 for v in med.values())
        for mode in ("fwd", "f+b"):
            assert np.isclose(r[f"ratio_ours_{mode}"], med[f"ours {mode}"] / med[f"torch {mode}"])
    assert json.loads(out.read_text())["results"][0]["op"] == results[0]["op"]


def test_cpu_convolutions_reach_the_jax_forms(tmp_path, monkeypatch, jit_options):
    """``--cpu-convolutions eigen``: every JAX form compiles with the options, and the JSON
    says which runtime ran."""
    from attention_jax import cpu_compiler_options

    out = tmp_path / "ops.json"
    bench_ops.main(["--only", "sk", "--batch-sizes", "1", "--repeats", "1", "--min-repeat-s",
                    "0", "--cpu-convolutions", "eigen", "--json", str(out)])
    monkeypatch.undo()
    bench_ops.main(["--only", "gates", "--batch-sizes", "1", "--repeats", "1"])  # resets
    assert jit_options and all(o == cpu_compiler_options("eigen") for o in jit_options)
    assert json.loads(out.read_text())["cpu_convolutions"] == "eigen"
    assert bench_ops._OPTIONS == {}


def test_matmul_forms_agree_with_torch():
    rng = np.random.default_rng(0)
    fns = bench_ops._matmul_fns(bench_ops.Matmul("cam", 8, 12, 5), 2, rng)
    ours = np.asarray(fns["ours fwd"]())
    ref = fns["torch fwd"]().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    y, (da, db) = fns["ours f+b"]()
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
    ta, tb = fns["torch f+b"]()
    np.testing.assert_allclose(np.asarray(da), ta.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(db), tb.numpy(), rtol=1e-5, atol=1e-5)


def test_dense_forms_agree_with_torch():
    """mhsa2d's projections: x @ w + b against ``F.linear`` (weight stored (out, in)), with the
    gradients w.r.t. the rows, the weight and the bias."""
    rng = np.random.default_rng(4)
    fns = bench_ops._dense_fns(bench_ops.Dense("mhsa2d", 6, 5, 7), 2, rng)
    ref = fns["torch fwd"]().numpy()
    assert ref.shape == (12, 7)
    tx, tw, tb = (t.numpy() for t in fns["torch f+b"]())
    for name in ("xla", "ours"):
        np.testing.assert_allclose(np.asarray(fns[f"{name} fwd"]()), ref, rtol=1e-5, atol=1e-5)
        y, (dx, dw, db) = fns[f"{name} f+b"]()
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dx), tx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dw), tw.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(db), tb, rtol=1e-5, atol=1e-5)


def _nhwc(t) -> np.ndarray:
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


@pytest.mark.parametrize("form", ["pool", "rescale", "gate"])
def test_gate_forms_agree_with_torch(form):
    rng = np.random.default_rng(1)
    fns = bench_ops._gate_fns(bench_ops.Gate("gates", 5, 3, form), 2, rng)
    ref = _nhwc(fns["torch fwd"]())
    ref_grads = [_nhwc(g) for g in fns["torch f+b"]()]
    assert len(ref_grads) == (2 if form == "rescale" else 1)
    for name in ("xla", "ours"):
        np.testing.assert_allclose(np.asarray(fns[f"{name} fwd"]()), ref, rtol=1e-5, atol=1e-6)
        y, grads = fns[f"{name} f+b"]()
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-6)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-6)


def test_criss_cross_forms_agree_with_torch():
    """The ``cca`` row's bare pass: the library's against the official CCNet pass (its 1x1
    layers handing over q, k and v), value and the gradients w.r.t. q, k and v."""
    rng = np.random.default_rng(5)
    fns = bench_ops._criss_cross_fns(bench_ops.CrissCross("cca", 5, 3, 4), 2, rng)
    ref = _nhwc(fns["torch fwd"]())
    assert ref.shape == (2, 5, 5, 4)
    ref_grads = [_nhwc(g) for g in fns["torch f+b"]()]
    assert [g.shape[-1] for g in ref_grads] == [3, 3, 4]
    np.testing.assert_allclose(np.asarray(fns["ours fwd"]()), ref, rtol=1e-5, atol=1e-5)
    y, grads = fns["ours f+b"]()
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5)


def test_softmax_forms_agree_with_torch():
    rng = np.random.default_rng(2)
    fns = bench_ops._softmax_fns(bench_ops.Softmax("attention", 4, 7), 3, rng)
    ref = fns["torch fwd"]().numpy()
    (ref_grad,) = fns["torch f+b"]()
    for name in ("xla", "ours"):
        np.testing.assert_allclose(np.asarray(fns[f"{name} fwd"]()), ref, rtol=1e-5, atol=1e-6)
        y, (grad,) = fns[f"{name} f+b"]()
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(grad), ref_grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("op", "n_grads"), [(bench_ops.Conv("stn", 6, 2, 3), 2),
                                             (bench_ops.Matmul("cam", 4, 5, 3), 2),
                                             (bench_ops.Dense("mhsa2d", 4, 5, 3), 3)],
                         ids=["conv", "matmul", "dense"])
def test_jax_forward_backward_step_computes_the_forward(op, n_grads):
    """The JAX f+b step returns the output with the gradients, so its compiled program runs the
    forward (PyTorch's autograd does): for a linear operation XLA would otherwise drop it."""
    fns = bench_ops._MAKERS[type(op)](op, 2, np.random.default_rng(3))
    for name in ("xla", "ours"):
        y, grads = fns[f"{name} f+b"]()
        np.testing.assert_allclose(np.asarray(y), np.asarray(fns[f"{name} fwd"]()), rtol=1e-6,
                                   atol=1e-6)
        assert len(grads) == n_grads

