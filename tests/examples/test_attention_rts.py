"""examples/attention_rts.py: a smoke run (tiny steps) of two variants writes its summary, and
the trained non-local network's query maps (``--maps``) are the sown rows, drawn."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _recomputed_attention(attention_rts, variables, x):
    """The first non-local block's softmax rows, recomputed in float64 NumPy from its input
    (captured as ``bn2``'s output) and its theta/phi 1x1 convolutions: no library code."""
    model = attention_rts.build_model("nl")
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True)
                       )(variables, x)
    block, attn = state["intermediates"]["layer1_0"], variables["params"]["layer1_0"]["attn"]
    h = np.asarray(block["bn2"]["__call__"][0], np.float64)  # (N, 11, 11, 16): attn's input
    n, hh, ww, c = h.shape
    tokens = h.reshape(n, hh * ww, c)

    def conv1x1(name):
        k, b = (np.asarray(attn[name][v], np.float64) for v in ("kernel", "bias"))
        return tokens @ k[0, 0] + b

    theta, phi = conv1x1("theta"), conv1x1("phi")
    logits = theta @ phi.transpose(0, 2, 1) / np.sqrt(theta.shape[-1])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), (hh, ww)


def test_smoke_run(examples, tmp_path, mnist_data_dir, capsys, monkeypatch):
    import attention_rts

    seen = {}
    real_attention, real_write = attention_rts.nonlocal_attention, attention_rts.write_maps

    def spy_attention(variables, x, *args, **kwargs):
        out = real_attention(variables, x, *args, **kwargs)
        seen["attention"] = (variables, x, out)
        return out

    def spy_write(*args, **kwargs):
        out = real_write(*args, **kwargs)
        seen["write"] = out
        return out

    monkeypatch.setattr(attention_rts, "nonlocal_attention", spy_attention)
    monkeypatch.setattr(attention_rts, "write_maps", spy_write)
    png = tmp_path / "maps" / "nl.png"
    rc = attention_rts.main(["--variants", "none,nl", "--seeds", "1", "--epochs", "1",
                             "--steps-per-epoch", "2", "--data-dir", mnist_data_dir,
                             "--out", str(tmp_path / "out"), "--maps", str(png),
                             "--map-digits", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["none", "nl"]
    for s in summary.values():
        assert s["seeds"] == 1 and 0 <= s["test_error_mean"] <= 100 and s["params"] > 0
        assert s["step_ms"] > 0
    # the non-local blocks' theta/phi/g/out projections (and out_bn) add parameters
    assert summary["nl"]["params"] > summary["none"]["params"]
    assert "±" not in out.split("| attention |")[1]

    # The sown map: (N, T, T) softmax rows, equal to a NumPy recomputation from the trained
    # block's own input and weights.
    variables, x, (preds, att, size) = seen["attention"]
    assert size == (11, 11) and att.shape == (len(x), 121, 121) and len(x) == 1000
    assert att.dtype == np.float32 and (att >= 0).all()
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    ref, ref_size = _recomputed_attention(attention_rts, variables, x[:16])
    assert ref_size == size
    np.testing.assert_allclose(att[:16], ref, rtol=1e-5, atol=1e-8)
    assert np.abs(att[:16] - 1 / 121).max() > 1e-3  # not a uniform map: the check can fail

    # The figure: 3 digits x (digit + 3 queries); each query panel shows that query's row.
    fig, facts = seen["write"]
    axes = np.asarray(fig.axes).reshape(3, 4)
    cells = attention_rts.cell_intensity(np.asarray(x[:3]), size)
    for i in range(3):
        assert axes[i, 0].images[0].get_array().shape == (42, 42)
        queries = attention_rts.pick_queries(cells[i])
        assert queries[0][0] == "ink" and queries[-1][0] == "background"
        for k, (_, (r, c)) in enumerate(queries, 1):
            shown = np.asarray(axes[i, k].images[1].get_array())
            np.testing.assert_allclose(shown, att[i, r * 11 + c].reshape(11, 11), rtol=1e-6)
            assert len(axes[i, k].lines) == 1  # the query marker
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The facts beside the picture, measured over the test digits.
    written = json.loads(png.with_suffix(".json").read_text())
    assert written == json.loads(json.dumps(facts))
    assert written["sown_map_shape"] == [1000, 121, 121] and written["max_row_sum_error"] < 1e-5
    assert 900 <= written["digits"] <= 1000 and 0 < written["ink_fraction"] < 0.5
    for k in ("ink_query_mass_on_ink", "background_query_mass_on_ink",
              "digits_ink_query_above_fraction"):
        assert 0 <= written[k] <= 1
    assert written["test_error"] == summary["nl"]["test_error_mean"]
    assert [d["test_index"] for d in written["drawn"]] == [0, 1, 2]
    assert [d["predicted"] for d in written["drawn"]] == preds[:3].tolist()
    assert written["drawn"][0]["queries"] == [[k, list(q)] for k, q in
                                              attention_rts.pick_queries(cells[0])]
    assert "ink queries put" in out and str(png) in out


def test_ink_attention_measures_mass_on_ink(examples):
    import attention_rts

    cells = np.zeros((2, 2, 2))
    cells[:, 0, 0] = 1.0  # one ink cell of four
    cells[:, 0, 1] = 0.1  # neither ink nor background
    uniform = np.full((2, 4, 4), 0.25)
    s = attention_rts.ink_attention(uniform, cells)
    assert s["digits"] == 2 and s["ink_fraction"] == 0.25
    assert s["ink_query_mass_on_ink"] == s["background_query_mass_on_ink"] == 0.25
    assert s["digits_ink_query_above_fraction"] == 0.0
    s = attention_rts.ink_attention(np.broadcast_to(np.eye(4), (2, 4, 4)), cells)  # self only
    assert s["ink_query_mass_on_ink"] == 1.0 and s["background_query_mass_on_ink"] == 0.0
    assert s["digits_ink_query_above_fraction"] == 1.0
    with pytest.raises(RuntimeError, match="no image has both"):
        attention_rts.ink_attention(uniform, np.ones((2, 2, 2)))


def test_cell_intensity_and_queries(examples):
    import attention_rts

    img = np.zeros((1, 6, 6, 1))
    img[0, :2, :3] = 1.0  # the top-left 2x3 pixels: all of cell (0, 0) of a 3x2 map
    cells = attention_rts.cell_intensity(img, (3, 2))
    np.testing.assert_allclose(cells[0], [[1, 0], [0, 0], [0, 0]])
    cells = attention_rts.cell_intensity(np.ones((1, 42, 42, 1)), (11, 11))
    np.testing.assert_allclose(cells, 1.0)  # partial pixels weighted by area
    c = np.zeros((4, 4))
    c[0, 0], c[0, 3], c[1, 1] = 1.0, 0.5, 0.4
    assert attention_rts.pick_queries(c) == [("ink", (0, 0)), ("ink", (0, 3)),
                                             ("background", (3, 3))]


def test_unknown_variant(examples, capsys):
    import attention_rts

    with pytest.raises(SystemExit):
        attention_rts.main(["--variants", "xyz"])
    assert "--variants: 'xyz' is not one of none" in capsys.readouterr().err


def test_maps_need_the_nl_variant(examples, tmp_path, capsys):
    import attention_rts

    with pytest.raises(SystemExit):
        attention_rts.main(["--variants", "none,se", "--maps", str(tmp_path / "m.png")])
    assert "--maps: needs the nl variant" in capsys.readouterr().err


def test_nonlocal_attention_refuses_a_map_that_is_not_a_distribution(examples, monkeypatch):
    import attention_rts

    x = jnp.zeros((2, 42, 42, 1))
    for bad, match in ((jnp.full((2, 121, 121), 0.5 / 121), "not distributions"),
                       (jnp.full((2, 121, 36), 1 / 36), "expected")):
        monkeypatch.setattr(attention_rts, "_collect_fn",
                            lambda bad=bad: lambda v, xs: (jnp.zeros(len(xs), int), bad))
        with pytest.raises(RuntimeError, match=match):
            attention_rts.nonlocal_attention({}, x)
