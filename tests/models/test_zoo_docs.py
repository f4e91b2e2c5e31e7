"""docs/zoo.md stays true: its table equals the zoo's data, and its Python examples run as
written (in a temporary directory holding a timm-format checkpoint of random weights; the
model name is swapped for the smallest zoo model to keep the test short)."""

import pathlib
import re

import numpy as np

from attention_jax.interop import save_state_dict_file
from attention_jax.models import model_info, pretrained_config
from tests.models.test_zoo import NAMES
from tests.models.timm_pairs import timm_random

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "zoo.md"


def test_table_is_the_zoos_data():
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d,]+) \| `(\w+)` \| ([\d.]+|\(no weights\)) "
                      r"\| (\d+) / ([\d.]+) / (\w+) \| ([\d.e+-]+) \|$", DOC.read_text(), re.M)
    assert [r[0] for r in rows] == NAMES
    for name, params, tag, top1, size, crop, interp, parity in rows:
        cfg = pretrained_config(name)
        assert int(params.replace(",", "")) == model_info(name).timm_params
        assert tag == cfg.tag and int(size) == cfg.input_size[-1]
        assert float(crop) == cfg.crop_pct and interp == cfg.interpolation
        assert top1 == (f"{cfg.top1:.2f}" if cfg.top1 is not None else "(no weights)")
        assert float(parity) <= 1e-4


def test_python_examples_run(tmp_path, monkeypatch):
    name = "resnest14d"
    _, sd = timm_random(name, seed=5)
    save_state_dict_file(sd, tmp_path / f"{name}.safetensors")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 3
    namespace = {"__name__": "zoo_md"}
    for block in blocks:
        exec(compile(block.replace("seresnet50", name), "docs/zoo.md", "exec"), namespace)
    np.testing.assert_allclose(namespace["logits_nnx"], namespace["logits"], rtol=1e-5,
                               atol=1e-5)
    assert namespace["variables10"]["params"]["fc"]["kernel"].shape == (2048, 10)
