"""examples/stn_mnist.py: a smoke run (tiny steps) writes the summary it promises, under its
output directory only; the model sizes, the learning-rate policy and the target checks."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stn(examples):
    import stn_mnist

    return stn_mnist


def _tracked_changes():
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "docs",
                          "runs"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def test_smoke_run_writes_the_summary_under_out_only(stn, tmp_path, mnist_data_dir, capsys):
    before = _tracked_changes()
    out = tmp_path / "out"
    rc = stn.main(["--configs", "RTS", "--models", "CNN,ST-CNN-Aff", "--seeds", "2",
                   "--epochs", "2", "--steps-per-epoch", "3", "--data-dir", mnist_data_dir,
                   "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["RTS"] and list(summary["RTS"]) == ["CNN", "ST-CNN-Aff"]
    for entry in summary["RTS"].values():
        assert set(entry) == {"test_error_mean", "test_error_std", "seeds"}
        assert entry["seeds"] == 2 and 0.0 <= entry["test_error_mean"] <= 100.0
        assert entry["test_error_std"] >= 0.0
    details = json.loads((out / "details.json").read_text())
    errors = [r["test_error"] for r in details["runs"] if r["model"] == "CNN"]
    assert summary["RTS"]["CNN"]["test_error_mean"] == pytest.approx(np.mean(errors))
    assert summary["RTS"]["CNN"]["test_error_std"] == pytest.approx(np.std(errors, ddof=1))
    for name in ("table.md", "stn_mnist.md", "stn_distortions.png", "stn_learning_curves.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "| CNN |" in printed and "±" in printed  # two seeds: mean ± std
    assert _tracked_changes() == before  # nothing written into the checkout
    # The report can be rewritten from the run's files alone (no training).
    report = (out / "stn_mnist.md").read_text()
    (out / "stn_mnist.md").unlink()
    assert stn.main(["--report-from", str(out)]) == 0
    assert (out / "stn_mnist.md").read_text() == report


def test_a_single_seed_prints_no_std_and_docs_go_where_asked(stn, tmp_path, mnist_data_dir,
                                                             capsys):
    docs = tmp_path / "docs"
    rc = stn.main(["--quick", "--configs", "RTS", "--models", "ST-CNN-Aff", "--epochs", "1",
                   "--steps-per-epoch", "2", "--data-dir", mnist_data_dir, "--out",
                   str(tmp_path / "out"), "--docs", "--docs-dir", str(docs)])
    assert rc == 0
    table = capsys.readouterr().out.split("| model |")[1]
    assert "±" not in table
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["RTS"]["ST-CNN-Aff"]["seeds"] == 1
    doc = (docs / "stn_mnist.md").read_text()
    assert "| ST-CNN-Aff |" in doc and "![stn_distortions.png](stn_distortions.png)" in doc
    assert (docs / "stn_distortions.png").is_file()


def test_models_of_one_config_have_comparable_sizes(stn):
    for config, size in (("R", 28), ("RTS", 42), ("P", 28), ("E", 28)):
        counts = {}
        for name in stn.MODELS:
            model = stn.build_model(name, config)
            shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                    jnp.zeros((1, size, size, 1)))
            counts[name] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
        assert max(counts.values()) <= 1.25 * min(counts.values()), (config, counts)


def test_localisation_nets_learn_at_their_own_rate(stn):
    model = stn.build_model("ST-CNN-TPS", "RTS")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 42, 42, 1)))["params"]
    budget = stn.Budget(lr=1e-2, loc_lr_scale=0.1, warmup_epochs=0)
    tx = stn.make_optimizer(params, total_steps=100, steps_per_epoch=10, budget=budget)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    # Adam's first step moves each parameter by its learning rate (the schedule's value at
    # step 0 of a cosine decay without warm-up is the peak).
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["loc"]["conv1"]["kernel"], -1e-3, rtol=1e-3)
    np.testing.assert_allclose(updates["cnn"]["conv1"]["kernel"], -1e-2, rtol=1e-3)
    assert isinstance(tx, optax.GradientTransformation)


def test_target_checks_and_collapse_detection(stn):
    def run(config, model, seed, err):
        return stn.Run(model, config, seed, err, [], 0, 0.0, 0.0, 0.0, 0.0)

    runs = [run("RTS", "CNN", s, e) for s, e in enumerate((6.0, 6.5, 7.0))]
    runs += [run("RTS", "ST-CNN-Aff", s, e) for s, e in enumerate((2.5, 2.8, 3.1))]
    summary = stn.summarise(runs)
    result = dict(stn.checks(summary, runs))
    assert all(result.values()), result
    runs.append(run("RTS", "ST-CNN-Aff", 3, 89.0))  # a seed that lost the digit
    summary = stn.summarise(runs)
    result = stn.checks(summary, runs)
    failed = [text for text, ok in result if not ok]
    assert any("RTS/ST-CNN-Aff/seed 3 (89.0%)" in t for t in failed)
    assert any("mean + std" in t for t in failed)
    assert [r.seed for r in stn.collapsed(runs)] == [3]


def test_bad_arguments_are_refused(stn, capsys):
    for argv, match in ((["--configs", "X"], "--configs: 'X' is not one of R, RTS, P, E"),
                        (["--models", "VGG"], "--models: 'VGG' is not one of FCN")):
        with pytest.raises(SystemExit):
            stn.main(argv)
        assert match in capsys.readouterr().err


def test_help_runs_as_a_script():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "stn_mnist.py"), "--help"],
                         capture_output=True, text=True, check=True)
    assert "--docs" in out.stdout and "runs/stn_mnist" in out.stdout
