"""examples/stn_lr_policy.py: a smoke run (tiny steps, two policies) writes its table."""

import json


def test_smoke_run(examples, tmp_path, mnist_data_dir, monkeypatch, capsys):
    import stn_lr_policy

    monkeypatch.setattr(stn_lr_policy, "POLICIES", ((2e-3, 1.0, 1), (2e-3, 0.1, 0)))
    docs = tmp_path / "docs"
    rc = stn_lr_policy.main(["--seeds", "2", "--epochs", "1", "--steps-per-epoch", "2",
                             "--data-dir", mnist_data_dir, "--out", str(tmp_path / "out"),
                             "--docs", "--docs-dir", str(docs)])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["lr 0.002, localisation x1, 1-epoch warm-up",
                             "lr 0.002, localisation x0.1, no warm-up"]
    for entry in summary.values():
        assert len(entry["errors"]) == 2 and entry["collapsed"] in (0, 1, 2)
    assert "| lr 0.002, localisation x0.1, no warm-up |" in (docs / "stn_lr_policy.md").read_text()
    assert "collapsed" in capsys.readouterr().out
