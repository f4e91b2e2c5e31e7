"""Fine-tuning: ``train(init_from=FILE, freeze_backbone=...)`` and ``attention-jax train
--init-from FILE``.

The files are made here: random weights of a zoo ResNet (a one-stage ``resnet18`` of width 8
for the training runs, the full one for the command line), written in timm's format by
``interop.to_timm_state_dict`` (whose keys and layout tests/models/test_zoo.py checks against
timm) with the safetensors numpy API, or as our variables file (``interop.save_variables``).
"""

import os
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.interop import save_state_dict_file, save_variables, to_timm_state_dict
from attention_jax.models import create_model
from attention_jax.train import TrainConfig, train
from attention_jax.train.checkpoint import CheckpointError
from attention_jax.train.finetune import adapt_input_conv, model_parts, read_init_from

NAME = "resnet18"
SMALL = {"layers": (1,), "widths": (8,), "stem_width": 8}  # compiles in seconds
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "zoo.md"


def random_variables(name=NAME, *, num_classes=1000, in_channels=3, seed=0, **arch):
    """Random linen variables of ``create_model(name, ...)``: weights N(0, 0.2^2), BatchNorm
    scale around 1, running means N(0, 0.1^2), running variances U(0.5, 1.5) (numpy, no
    compilation: the shapes come from ``jax.eval_shape``)."""
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, **arch)
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, 32, 32, in_channels)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        leaf_name = str(path[-1].key)
        if leaf_name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if leaf_name == "mean":
            return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        if leaf_name == "scale":
            return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)

    return {"params": jax.tree_util.tree_map_with_path(fill, abstract["params"]),
            "batch_stats": jax.tree_util.tree_map_with_path(fill, abstract["batch_stats"])}


def timm_file(path, variables, name=NAME, **arch):
    save_state_dict_file(to_timm_state_dict(variables, name, **arch), path)
    return str(path)


def _config(data_dir, **kw):
    base = dict(dataset="digits/plain", model=NAME, steps=3, batch_size=8, lr=1e-2, seed=0,
                data_dir=data_dir, progress=False, log_every=1, eval=False)
    base.update(kw)
    return TrainConfig(**base)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _expected_start(file_vars):
    """The file's variables as the 1-channel, 10-class run takes them: the stem summed over
    RGB, no head."""
    params = {k: v for k, v in file_vars["params"].items() if k != "fc"}
    params["conv1"] = {"kernel": file_vars["params"]["conv1"]["kernel"].sum(2, keepdims=True)}
    return {"params": params, "batch_stats": file_vars["batch_stats"]}


# --------------------------------------------------------------------------- the stem rule


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4, 7])
def test_adapt_input_conv_is_timms(in_channels):
    import torch

    from tests.timm_oracle import import_timm

    import_timm()
    from timm.models._manipulate import adapt_input_conv as timm_adapt

    kernel = np.random.default_rng(in_channels).normal(size=(7, 5, 3, 6)).astype(np.float32)
    want = timm_adapt(in_channels, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    got = adapt_input_conv(kernel, in_channels)
    assert got.shape == (7, 5, in_channels, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy().transpose(2, 3, 1, 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((3, 3, 3)), 1), r"adapt_input_conv: kernel must be a rank-4 \(KH, KW, C, O\) "
                               r"kernel, got shape \(3, 3, 3\)"),
    ((np.zeros((3, 3, 3, 4)), 0), "adapt_input_conv: in_channels must be an integer >= 1, got 0"),
])
def test_adapt_input_conv_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        adapt_input_conv(*args)


# --------------------------------------------------------------------------- matching a file


def _parts_and_abstract(in_channels=1, num_classes=10):
    def abstract_of(k, shape):
        model = create_model(NAME, num_classes=k, in_channels=shape[-1], **SMALL)
        return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))

    shape = (28, 28, in_channels)
    return model_parts(abstract_of, num_classes, shape), abstract_of(num_classes, shape)


@pytest.mark.parametrize("kind", ["timm", "ours"])
def test_read_init_from_takes_the_backbone_and_leaves_the_head(tmp_path, kind):
    file_vars = random_variables(**SMALL)
    if kind == "timm":
        path = timm_file(tmp_path / "w.safetensors", file_vars, **SMALL)
    else:
        path = str(tmp_path / "w.safetensors")
        save_variables(file_vars, path, model=NAME, num_classes=1000)
    parts, abstract = _parts_and_abstract()
    assert parts.head == {("params", "fc", "kernel"), ("params", "fc", "bias")}
    assert parts.stem == {("params", "conv1", "kernel")}
    init = read_init_from(path, model=NAME, abstract=abstract, parts=parts, overrides=SMALL)
    assert init.source == ("timm state dict" if kind == "timm" else "attention-jax variables")
    assert init.notes == ("head fc 1000 -> 10 classes: initialised fresh",
                          "stem conv1 3 -> 1 input channels: kernel adapted as timm's "
                          "adapt_input_conv (summed over the file's channels)")
    want = _flat(_expected_start(file_vars))
    got = {jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in p)): v
           for p, v in init.values.items()}
    assert set(got) == set(want)  # everything but the head
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_a_file_without_head_gets_a_fresh_one(tmp_path):
    # timm's num_classes=0 models (and their state dicts) have no fc.
    file_vars = random_variables(**SMALL)
    state = {k: v for k, v in to_timm_state_dict(file_vars, NAME, **SMALL).items()
             if not k.startswith("fc.")}
    save_state_dict_file(state, tmp_path / "headless.safetensors")
    parts, abstract = _parts_and_abstract(in_channels=3)
    init = read_init_from(tmp_path / "headless.safetensors", model=NAME, abstract=abstract,
                          parts=parts, overrides=SMALL)
    assert init.notes == ("head fc not in the file -> 10 classes: initialised fresh",)
    assert len(init.values) == len(state) and ("params", "fc", "bias") not in init.values


def test_a_head_of_the_runs_width_is_loaded(tmp_path):
    file_vars = random_variables(num_classes=10, in_channels=1, **SMALL)
    path = str(tmp_path / "tuned.safetensors")
    save_variables(file_vars, path, model=NAME, num_classes=10)
    parts, abstract = _parts_and_abstract()
    init = read_init_from(path, model=NAME, abstract=abstract, parts=parts)
    assert init.notes == ("head fc (10 classes) loaded from the file",)
    np.testing.assert_array_equal(init.values["params", "fc", "kernel"],
                                  file_vars["params"]["fc"]["kernel"])
    assert len(init.values) == len(_flat(file_vars))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_frozen_backbone_stays_the_files_and_the_head_trains(plain_dir, tmp_path, api, capsys):
    file_vars = random_variables(**SMALL)
    path = timm_file(tmp_path / "w.safetensors", file_vars, **SMALL)
    result = train(_config(plain_dir, api=api, init_from=path, freeze_backbone=True),
                   model_overrides=SMALL)
    err = capsys.readouterr().err
    assert "train: init_from: head fc 1000 -> 10 classes: initialised fresh" in err
    assert "stem conv1 3 -> 1 input channels" in err
    # Every backbone parameter and every BatchNorm statistic: bit-identical to the file's.
    start = _expected_start(file_vars)
    got = _flat({"params": {k: v for k, v in result.variables["params"].items() if k != "fc"},
                 "batch_stats": result.variables["batch_stats"]})
    want = _flat(start)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The head is the run's (10 classes) and it trained (its bias starts at zero).
    fc = result.variables["params"]["fc"]
    assert fc["kernel"].shape == (8, 10) and np.abs(fc["bias"]).min() > 0
    assert result.step == 3 and all(np.isfinite(h["loss"]) for h in result.history)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_full_fine_tune_starts_from_the_file(plain_dir, tmp_path, api):
    file_vars = random_variables(**SMALL)
    path = timm_file(tmp_path / "w.safetensors", file_vars, **SMALL)
    lr, steps = 1e-4, 2
    result = train(_config(plain_dir, api=api, init_from=path, lr=lr, steps=steps,
                           schedule="constant", clip_norm=None), model_overrides=SMALL)
    # Adam moves a parameter by at most lr * (1 - b1) / sqrt(1 - b2) (~3.2 lr) a step: every
    # backbone parameter is within that of the file's value (a fresh initialisation is ~0.1
    # away), and they all moved.
    want = _flat(_expected_start(file_vars)["params"])
    got = _flat({k: v for k, v in result.variables["params"].items() if k != "fc"})
    assert set(got) == set(want)
    for k in want:
        delta = np.abs(got[k] - want[k])
        assert delta.max() <= 3.2 * lr * steps, (k, delta.max())
        assert delta.max() > 0, k
    # Training mode: BatchNorm's running statistics moved from the file's.
    moved = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(result.variables["batch_stats"]),
        jax.tree.leaves(file_vars["batch_stats"]), strict=True)]
    assert all(moved)


def test_resume_continues_from_the_checkpoint_not_the_file(plain_dir, tmp_path):
    file_vars = random_variables(**SMALL)
    path = timm_file(tmp_path / "w.safetensors", file_vars, **SMALL)
    kw = dict(init_from=path, freeze_backbone=True, steps=4)
    full = train(_config(plain_dir, **kw), model_overrides=SMALL)
    cfg = _config(plain_dir, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2, **kw)

    class Stop(Exception):
        pass

    def stop_at_3(done, metrics):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, callback=stop_at_3, model_overrides=SMALL)
    # Another file, or another freeze setting, is refused: the run would not be the same.
    other = timm_file(tmp_path / "other.safetensors", random_variables(seed=1, **SMALL), **SMALL)
    for change, key in ((dict(init_from=other), "init_from"),
                        (dict(freeze_backbone=False), "freeze_backbone")):
        with pytest.raises(CheckpointError, match=f"must have the same {key}, "):
            train(TrainConfig(**{**cfg.__dict__, "resume": True, **change}),
                  model_overrides=SMALL)
    os.remove(path)  # a resume never reads the file
    resumed = train(TrainConfig(**{**cfg.__dict__, "resume": True}), model_overrides=SMALL)
    assert resumed.step == 4
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # And with another path named on purpose (--resume-override init-from) it continues too.
    again = train(TrainConfig(**{**cfg.__dict__, "resume": True, "steps": 5, "init_from": other,
                                 "resume_override": ("init_from", "steps")}),
                  model_overrides=SMALL)
    assert again.step == 5


# --------------------------------------------------------------------------- errors


def _bad_files(tmp):
    """name -> (path, model, overrides, *parts of the expected message)."""
    good = random_variables(**SMALL)
    deeper = random_variables(**{**SMALL, "layers": (2,)})
    wider = random_variables(**{**SMALL, "widths": (16,)})
    ours_other = str(tmp / "r34.safetensors")
    save_variables(good, ours_other, model="resnet34")
    ours_wrong = str(tmp / "wrong.safetensors")
    save_variables(wider, ours_wrong, model=NAME)
    (tmp / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp / "weights.npz").write_bytes(b"")
    tiny = random_variables("resnet", num_classes=10, in_channels=1, layers=(1,), widths=(8,),
                            stem_width=8)
    return {
        "missing-file": (str(tmp / "none.safetensors"), NAME, SMALL,
                         "train: init_from must be an existing file (a timm state dict "
                         "(.safetensors, .pth, .pt, .bin) or an attention-jax variables file"),
        "extension": (str(tmp / "weights.npz"), NAME, SMALL,
                      "train: init_from must be a timm state dict (.safetensors, .pth, .pt, "
                      ".bin) or an attention-jax variables file (attention-jax convert), named "
                      "*.safetensors, *.pth, *.pt, *.bin, got"),
        "unreadable": (str(tmp / "junk.safetensors"), NAME, SMALL,
                       "which safetensors cannot read"),
        "timm-architecture": (timm_file(tmp / "deeper.safetensors", deeper, layers=(2,),
                                        widths=(8,), stem_width=8), NAME, SMALL,
                              "train: init_from must be a timm state dict of 'resnet18', got "
                              "'{tmp}/deeper.safetensors': load_timm_state_dict: state_dict "
                              "must be the tensors of timm's 'resnet18' (num_classes=1000) with "
                              "their shapes, got unexpected keys [layer1.1.bn1.bias (shape "
                              "(8,))"),
        "timm-shapes": (timm_file(tmp / "wider.safetensors", wider, layers=(1,), widths=(16,),
                                  stem_width=8), NAME, SMALL,
                        "wrong shapes [layer1.0.conv1.weight: expected (8, 8, 3, 3), got "
                        "(16, 8, 3, 3)"),
        "ours-other-model": (ours_other, NAME, SMALL,
                             "train: init_from must be variables of model 'resnet18', got "
                             "'{tmp}/r34.safetensors', holding variables of 'resnet34'"),
        "ours-shapes": (ours_wrong, NAME, SMALL,
                        "train: init_from must be the weights of 'resnet18' as built for this "
                        "run (only the head and the stem's input channels may differ), got "
                        "'{tmp}/wrong.safetensors' with unexpected "
                        "[params/layer1_0/downsample_bn/bias (shape (16,)), ",
                        "; wrong shapes [params/layer1_0/bn1/bias: expected (8,), got (16,), "),
        "timm-for-a-non-timm-model": (timm_file(tmp / "t.safetensors", good, **SMALL), "resnet",
                                      {"layers": (1,), "widths": (8,), "stem_width": 8},
                                      "train: init_from must be an attention-jax variables file "
                                      "for model 'resnet' (timm state dicts fit timm's names "
                                      "only: ecaresnet101d,"),
        "ours-missing-tensors": (_without(tiny, tmp / "tiny.safetensors"), "resnet",
                                 {"layers": (1,), "widths": (8,), "stem_width": 8},
                                 "with missing [batch_stats/bn1/mean (expected (8,)), "
                                 "batch_stats/bn1/var (expected (8,))]"),
    }


def _without(variables, path):
    """Our variables file of ``variables`` less the stem's BatchNorm statistics."""
    variables = {"params": variables["params"],
                 "batch_stats": {k: v for k, v in variables["batch_stats"].items() if k != "bn1"}}
    save_variables(variables, path, model="resnet")
    return str(path)


def test_bad_files_are_clear_errors_before_anything_is_written(plain_dir, tmp_path):
    cases = _bad_files(tmp_path)
    for case, (path, model, overrides, *messages) in cases.items():
        ckpt = tmp_path / f"ckpt-{case}"
        with pytest.raises(ValueError) as info:
            train(_config(plain_dir, model=model, init_from=path, checkpoint_dir=str(ckpt)),
                  model_overrides=overrides)
        text = str(info.value)
        for message in messages:
            assert message.replace("{tmp}", str(tmp_path)) in text, (case, text)
        assert not ckpt.exists(), case


def test_freeze_backbone_needs_init_from(plain_dir):
    with pytest.raises(ValueError, match="train: freeze_backbone must be used with init_from"):
        _config(plain_dir, freeze_backbone=True)
    with pytest.raises(ValueError, match="train: init_from must be None or a path, got 3"):
        _config(plain_dir, init_from=3)


# --------------------------------------------------------------------------- the commands


def _doc_commands():
    """The ``attention-jax`` commands of docs/zoo.md's Fine-tune section, as argument lists."""
    section = DOC.read_text().split("## Fine-tune", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(x)[1:] for x in lines if x.startswith("attention-jax ")]


def test_the_docs_commands_run(plain_dir, tmp_path, monkeypatch, capsys):
    """docs/zoo.md's convert and train commands, as written, on a full resnet18 of random
    weights (for seresnet50), 2 steps each."""
    from attention_jax.cli import main

    commands = _doc_commands()
    assert [c[0] for c in commands] == ["convert", "train", "train"]
    file_vars = random_variables(NAME)
    monkeypatch.chdir(tmp_path)
    timm_file(tmp_path / f"{NAME}.safetensors", file_vars)
    for argv in commands:
        argv = [a.replace("seresnet50", NAME) for a in argv]
        if argv[0] == "train":
            argv[argv.index("--steps") + 1] = "2"
            argv[argv.index("--batch-size") + 1] = "8"
            argv += ["--data-dir", plain_dir, "--no-progress", "--no-eval"]
        assert main(argv) == 0, argv
        out, err = capsys.readouterr()
        if argv[0] == "train":
            assert "train: init_from: head fc 1000 -> 10 classes: initialised fresh" in err
            assert "stem conv1 3 -> 1 input channels" in err
            assert '"step": 2' in out.splitlines()[-1]
    assert (tmp_path / "runs" / "ft" / "2").is_dir()  # the first train command's checkpoint


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_a_timm_name_keeps_its_attention(api):
    # --model seresnet18 is SE-ResNet-18 (its file has se.* tensors); --attention replaces it.
    from attention_jax.train.trainer import _build_classifier

    def layer(attention):
        cfg = TrainConfig(model="seresnet18", api=api, attention=attention)
        c = _build_classifier(cfg, 10, (28, 28, 1), dict(SMALL))
        return jax.eval_shape(lambda k: c.init(k, (28, 28, 1)), jax.random.key(0))[
            "params"]["layer1_0"]

    assert set(layer(None)["attn"]) == {"fc1", "fc2"}
    assert set(layer("eca")["attn"]) == {"conv"}
