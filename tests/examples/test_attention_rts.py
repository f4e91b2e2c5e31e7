"""examples/attention_rts.py: a smoke run (tiny steps) of two variants writes its summary."""

import json

import pytest


def test_smoke_run(examples, tmp_path, mnist_data_dir, capsys):
    import attention_rts

    rc = attention_rts.main(["--variants", "none,se", "--seeds", "1", "--epochs", "1",
                             "--steps-per-epoch", "2", "--data-dir", mnist_data_dir,
                             "--out", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["none", "se"]
    for s in summary.values():
        assert s["seeds"] == 1 and 0 <= s["test_error_mean"] <= 100 and s["params"] > 0
        assert s["step_ms"] > 0
    assert summary["se"]["params"] > summary["none"]["params"]  # SE adds its two 1x1 convs
    assert "±" not in capsys.readouterr().out.split("| attention |")[1]


def test_unknown_variant(examples, capsys):
    import attention_rts

    with pytest.raises(SystemExit):
        attention_rts.main(["--variants", "xyz"])
    assert "--variants: 'xyz' is not one of none" in capsys.readouterr().err
